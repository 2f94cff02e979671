//! Coverage-guided fuzzing of the DNS query parser (an agent writes every byte of its
//! queries): never a panic, a clean query re-encodes to itself, an error answer keeps the id.
#![no_main]

use keyturn::dns::wire::{Rcode, Transport, parse_answer, parse_query, response};

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    for transport in [Transport::Udp, Transport::Tcp] {
        match parse_query(data, transport) {
            Ok(query) => {
                let again = parse_query(&query.to_bytes(query.id), transport)
                    .expect("a re-encoded query parses");
                assert_eq!(again, query, "the re-encoded query parses back to the same query");
                let refused = response(&query, Rcode::Refused);
                let answer = parse_answer(&query, query.id, &refused).expect("our own answer parses");
                assert_eq!(answer.rcode, Rcode::Refused.code());
            }
            Err(err) => {
                if let Some(answer) = err.answer() {
                    assert!(answer.len() >= 12, "an error answer has a header");
                    assert_eq!(answer.get(..2), data.get(..2), "an error answer keeps the query's id");
                }
            }
        }
    }
});
