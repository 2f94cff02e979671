//! DNS messages on the wire: strict parsing of the queries an agent sends, defensive parsing of the
//! upstream resolver's answers, and the few messages keyturn writes itself.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use thiserror::Error;

use super::name::{Name, NameError};

/// The length of a DNS header.
const HEADER_LEN: usize = 12;
/// The longest name on the wire, length bytes and root label included.
const MAX_WIRE_NAME: usize = 255;
/// The most compression pointers followed while reading one name.
const MAX_POINTERS: usize = 127;
/// The most CNAMEs followed from the question's name.
const MAX_CNAMES: usize = 8;
/// The largest query over UDP without EDNS, or with an EDNS size below it.
const UDP_PLAIN_LIMIT: usize = 512;
/// The largest message over TCP (its length prefix is 16 bits).
const TCP_LIMIT: usize = 65_535;
/// The UDP payload size keyturn advertises in the OPT records of the answers it writes.
pub const ADVERTISED_UDP_PAYLOAD: u16 = 1232;

const TYPE_A: u16 = 1;
const TYPE_CNAME: u16 = 5;
const TYPE_AAAA: u16 = 28;
const TYPE_OPT: u16 = 41;
const CLASS_IN: u16 = 1;

const FLAG_QR: u16 = 0x8000;
const OPCODE_MASK: u16 = 0x7800;
const OPCODE_SHIFT: u16 = 11;
const FLAG_TC: u16 = 0x0200;
const FLAG_RD: u16 = 0x0100;
const FLAG_RA: u16 = 0x0080;
const RCODE_MASK: u16 = 0x000f;
/// The DO bit in the first byte of the OPT record's flags.
const DNSSEC_OK_BIT: u8 = 0x80;
/// BADVERS: a 12-bit rcode, so it needs an OPT record to be sent.
const BADVERS: u16 = 16;

/// How a query reached keyturn, which bounds its size.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Transport {
    /// A UDP datagram: at most 512 bytes, or the EDNS payload size the query advertises.
    Udp,
    /// A TCP message (without its two-byte length prefix): at most 65535 bytes.
    Tcp,
}

impl Transport {
    /// The largest query allowed over this transport.
    fn limit(self, edns: Option<Edns>) -> usize {
        match self {
            Self::Tcp => TCP_LIMIT,
            Self::Udp => {
                edns.map_or(UDP_PLAIN_LIMIT, |edns| usize::from(edns.udp_payload_size).max(UDP_PLAIN_LIMIT))
            }
        }
    }
}

/// The EDNS0 data a query carried in its OPT record (its options are dropped).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Edns {
    /// The largest UDP answer the sender accepts, as written (values below 512 mean 512).
    pub udp_payload_size: u16,
    /// The DO bit: the sender wants DNSSEC records.
    pub dnssec_ok: bool,
}

/// A valid query: one question for a [`Name`] in class IN, without the bytes the agent sent.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Query {
    /// The agent's message id, to answer under.
    pub id: u16,
    /// The name asked for.
    pub name: Name,
    /// The record type asked for (1 for A, 28 for AAAA, …).
    pub qtype: u16,
    /// The RD bit.
    pub recursion_desired: bool,
    /// The query's EDNS0 data, when it had an OPT record.
    pub edns: Option<Edns>,
}

impl Query {
    /// Writes this query afresh under `id`, to forward upstream: the RD bit, the question, and an
    /// OPT record (payload size and DO bit only) when the agent sent one. Nothing else the agent
    /// wrote is carried over.
    #[must_use]
    pub fn to_bytes(&self, id: u16) -> Vec<u8> {
        let mut out = Vec::with_capacity(HEADER_LEN + MAX_WIRE_NAME + 4 + 11);
        let flags = if self.recursion_desired { FLAG_RD } else { 0 };
        push_header(&mut out, id, flags, self.edns.is_some());
        push_question(&mut out, &self.name, self.qtype);
        if let Some(edns) = self.edns {
            push_opt(&mut out, edns.udp_payload_size, 0, edns.dnssec_ok);
        }
        out
    }
}

/// The response codes keyturn answers with.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Rcode {
    /// 1: the query was malformed.
    FormErr,
    /// 2: the resolver failed.
    ServFail,
    /// 4: the kind of query is not implemented.
    NotImp,
    /// 5: the query was refused (by policy).
    Refused,
}

impl Rcode {
    /// The numeric code, as in the header.
    #[must_use]
    pub fn code(self) -> u16 {
        match self {
            Self::FormErr => 1,
            Self::ServFail => 2,
            Self::NotImp => 4,
            Self::Refused => 5,
        }
    }
}

/// A message that is not well-formed DNS.
#[derive(Clone, Debug, PartialEq, Eq, Error)]
pub enum FormatError {
    /// The message stops before the end of something it announced.
    #[error("the message ends inside {what}")]
    Truncated {
        /// What was being read.
        what: &'static str,
    },
    /// A compression pointer in a query, where clients never compress.
    #[error("the query uses a compression pointer at offset {at}; a query must not compress its names")]
    CompressionPointer {
        /// The pointer's offset in the message.
        at: usize,
    },
    /// A compression pointer past the end of the message.
    #[error("the compression pointer at offset {at} points to offset {target}, past the end of the message")]
    PointerOutOfBounds {
        /// The pointer's offset in the message.
        at: usize,
        /// Where it points.
        target: usize,
    },
    /// A compression pointer to itself or further on, which could loop.
    #[error(
        "the compression pointer at offset {at} points to offset {target}, which is not before the \
         labels it continues"
    )]
    PointerNotBackward {
        /// The pointer's offset in the message.
        at: usize,
        /// Where it points.
        target: usize,
    },
    /// A name chaining more compression pointers than any real message needs.
    #[error("a name follows more than {MAX_POINTERS} compression pointers")]
    TooManyPointers,
    /// A label whose length byte starts with the reserved bits `01` or `10`.
    #[error("the label at offset {at} starts with {byte:#04x}, a reserved label type")]
    ReservedLabelType {
        /// The label's offset in the message.
        at: usize,
        /// Its first byte.
        byte: u8,
    },
    /// A name longer than 255 bytes on the wire.
    #[error("a name is longer than 255 bytes on the wire")]
    NameTooLong,
    /// A record whose data does not fit its type.
    #[error("a record of type {rtype} has {len} bytes of data that do not fit its type")]
    BadRecordData {
        /// The record type.
        rtype: u16,
        /// The length of its data.
        len: usize,
    },
    /// An OPT record whose options do not add up to its data length.
    #[error("the OPT record's options are malformed")]
    BadOptions,
    /// Bytes after the last record the header announced.
    #[error("{count} bytes follow the last record")]
    TrailingBytes {
        /// How many.
        count: usize,
    },
}

/// What is wrong with a query.
#[derive(Clone, Debug, PartialEq, Eq, Error)]
pub enum QueryProblem {
    /// Not even a header (never answered).
    #[error("the message is {len} bytes long, shorter than a DNS header (12 bytes)")]
    TooShort {
        /// The message length.
        len: usize,
    },
    /// The QR bit is set (never answered: never answer an answer).
    #[error("the message is a response (QR bit set), not a query")]
    IsResponse,
    /// An opcode other than QUERY (NOTIMP).
    #[error("opcode {0} is not supported (only QUERY, 0)")]
    Opcode(u16),
    /// The TC bit is set (FORMERR).
    #[error("the query has the TC (truncated) bit set")]
    TruncatedFlag,
    /// Not exactly one question (FORMERR).
    #[error("the query has {0} questions; exactly one is supported")]
    QuestionCount(u16),
    /// Answer or authority records (FORMERR).
    #[error("a query must not carry records: it has {answers} answer and {authority} authority records")]
    UnexpectedRecords {
        /// The answer count.
        answers: u16,
        /// The authority count.
        authority: u16,
    },
    /// More than one additional record (FORMERR).
    #[error("the query has {0} additional records; at most one, an OPT record, is allowed")]
    AdditionalCount(u16),
    /// The additional record is not an OPT record (FORMERR).
    #[error("the additional record has type {0}; only an OPT record (type 41) is allowed")]
    NotOpt(u16),
    /// The OPT record is not owned by the root name (FORMERR).
    #[error("the OPT record's owner is not the root name")]
    OptOwner,
    /// An EDNS version other than 0 (BADVERS, with an OPT record).
    #[error("EDNS version {0} is not supported (only 0)")]
    EdnsVersion(u8),
    /// Larger than the transport allows (FORMERR).
    #[error("the query is {len} bytes long, more than the {limit} bytes its transport allows")]
    TooLong {
        /// The message length.
        len: usize,
        /// The limit.
        limit: usize,
    },
    /// A class other than IN (REFUSED).
    #[error("query class {0} is not supported (only IN, 1)")]
    Class(u16),
    /// A well-formed question whose name breaks the rules of [`Name`] (REFUSED).
    #[error("the question name is refused: {0}")]
    BadName(NameError),
    /// The message is not well-formed (FORMERR).
    #[error(transparent)]
    Format(#[from] FormatError),
}

/// A refused query: what was wrong, and what (if anything) to answer.
#[derive(Clone, Debug, Error)]
#[error("{problem}")]
pub struct QueryError {
    problem: QueryProblem,
    reply: Option<Reply>,
}

/// What an error answer copies from the query.
#[derive(Clone, Debug)]
struct Reply {
    id: u16,
    /// The query's opcode and RD bit.
    flags: u16,
    /// The question's bytes as sent, once the whole message is known to be well-formed.
    question: Option<Vec<u8>>,
    /// The DO bit of the query's OPT record, once that record is known to be well-formed.
    dnssec_ok: Option<bool>,
}

impl QueryError {
    /// What was wrong with the query.
    #[cfg(test)]
    pub fn problem(&self) -> &QueryProblem {
        &self.problem
    }

    /// The response code to answer with (16 is BADVERS), or `None` when nothing must be sent.
    #[must_use]
    pub fn rcode(&self) -> Option<u16> {
        self.reply.as_ref()?;
        Some(match &self.problem {
            QueryProblem::Opcode(_) => Rcode::NotImp.code(),
            QueryProblem::EdnsVersion(_) => BADVERS,
            QueryProblem::Class(_) | QueryProblem::BadName(_) => Rcode::Refused.code(),
            _ => Rcode::FormErr.code(),
        })
    }

    /// The error response to send: the query's id, opcode and RD bit, QR and RA set, the rcode;
    /// the question echoed and an OPT record added only when the query was well-formed (its
    /// problem is its EDNS version, its size, its class or its name). `None` when no answer must
    /// be sent.
    #[must_use]
    pub fn answer(&self) -> Option<Vec<u8>> {
        let reply = self.reply.as_ref()?;
        let rcode = self.rcode()?;
        let question = reply.question.as_deref().unwrap_or_default();
        let mut out = Vec::with_capacity(HEADER_LEN + question.len() + 11);
        let flags = reply.flags | FLAG_QR | FLAG_RA | (rcode & RCODE_MASK);
        push_u16(&mut out, reply.id);
        push_u16(&mut out, flags);
        push_u16(&mut out, u16::from(reply.question.is_some()));
        push_u16(&mut out, 0);
        push_u16(&mut out, 0);
        push_u16(&mut out, u16::from(reply.dnssec_ok.is_some()));
        out.extend_from_slice(question);
        if let Some(dnssec_ok) = reply.dnssec_ok {
            let [_, extended] = (rcode >> 4).to_be_bytes();
            push_opt(&mut out, ADVERTISED_UDP_PAYLOAD, extended, dnssec_ok);
        }
        Some(out)
    }
}

/// Parses a query from an agent, strictly: one question for a valid [`Name`] in class IN, no
/// records but an optional OPT record (EDNS version 0), no compression, nothing after the end,
/// no larger than `transport` allows.
///
/// # Errors
///
/// A [`QueryError`] saying what was wrong and holding the answer to send, if any.
pub fn parse_query(bytes: &[u8], transport: Transport) -> Result<Query, QueryError> {
    let mut reader = Reader::new(bytes);
    let Ok(header) = Header::read(&mut reader) else {
        return Err(QueryError { problem: QueryProblem::TooShort { len: bytes.len() }, reply: None });
    };
    if header.flags & FLAG_QR != 0 {
        return Err(QueryError { problem: QueryProblem::IsResponse, reply: None });
    }
    let mut reply = Reply {
        id: header.id,
        flags: header.flags & (OPCODE_MASK | FLAG_RD),
        question: None,
        dnssec_ok: None,
    };
    let body =
        match check_query_header(&header).and_then(|()| read_query_body(&mut reader, header.additional)) {
            Ok(body) => body,
            Err(problem) => {
                return Err(QueryError { problem, reply: Some(reply) });
            }
        };
    reply.question = Some(body.question.to_vec());
    reply.dnssec_ok = body.edns.map(|edns| edns.dnssec_ok);
    let refuse = |problem| Err(QueryError { problem, reply: Some(reply.clone()) });
    if body.edns_version != 0 {
        return refuse(QueryProblem::EdnsVersion(body.edns_version));
    }
    let limit = transport.limit(body.edns);
    if bytes.len() > limit {
        return refuse(QueryProblem::TooLong { len: bytes.len(), limit });
    }
    if body.qclass != CLASS_IN {
        return refuse(QueryProblem::Class(body.qclass));
    }
    match Name::from_labels(wire_labels(&body.name)) {
        Ok(name) => Ok(Query {
            id: header.id,
            name,
            qtype: body.qtype,
            recursion_desired: header.flags & FLAG_RD != 0,
            edns: body.edns,
        }),
        Err(err) => refuse(QueryProblem::BadName(err)),
    }
}

/// Refuses query headers keyturn does not handle.
fn check_query_header(header: &Header) -> Result<(), QueryProblem> {
    let opcode = (header.flags & OPCODE_MASK) >> OPCODE_SHIFT;
    if opcode != 0 {
        return Err(QueryProblem::Opcode(opcode));
    }
    if header.flags & FLAG_TC != 0 {
        return Err(QueryProblem::TruncatedFlag);
    }
    if header.questions != 1 {
        return Err(QueryProblem::QuestionCount(header.questions));
    }
    if header.answers != 0 || header.authority != 0 {
        return Err(QueryProblem::UnexpectedRecords { answers: header.answers, authority: header.authority });
    }
    if header.additional > 1 {
        return Err(QueryProblem::AdditionalCount(header.additional));
    }
    Ok(())
}

/// A query's question and OPT record, read but not yet judged.
struct QueryBody<'a> {
    /// The question's bytes as sent (name, type, class).
    question: &'a [u8],
    /// The name in lowercase wire form.
    name: Vec<u8>,
    qtype: u16,
    qclass: u16,
    edns: Option<Edns>,
    edns_version: u8,
}

/// Reads the question and the optional OPT record that [`check_query_header`] allowed, and checks
/// nothing follows them.
fn read_query_body<'a>(reader: &mut Reader<'a>, additional: u16) -> Result<QueryBody<'a>, QueryProblem> {
    let start = reader.pos;
    let name = reader.name(Compression::Forbidden)?;
    let qtype = reader.u16("the question")?;
    let qclass = reader.u16("the question")?;
    let question = reader.msg.get(start..reader.pos).unwrap_or_default();
    let (edns, edns_version) = if additional == 1 {
        let (edns, version) = read_query_opt(reader)?;
        (Some(edns), version)
    } else {
        (None, 0)
    };
    if reader.remaining() > 0 {
        return Err(FormatError::TrailingBytes { count: reader.remaining() }.into());
    }
    Ok(QueryBody { question, name, qtype, qclass, edns, edns_version })
}

/// Reads a query's one additional record, which must be an OPT record for the root name.
fn read_query_opt(reader: &mut Reader<'_>) -> Result<(Edns, u8), QueryProblem> {
    let owner = reader.name(Compression::Forbidden)?;
    let rtype = reader.u16("the additional record")?;
    if rtype != TYPE_OPT {
        return Err(QueryProblem::NotOpt(rtype));
    }
    if owner != [0] {
        return Err(QueryProblem::OptOwner);
    }
    let udp_payload_size = reader.u16("the OPT record")?;
    let [_extended_rcode, version, flags, _] = reader.array::<4>("the OPT record")?;
    let data_len = reader.u16("the OPT record")?;
    let mut options = Reader::new(reader.bytes(usize::from(data_len), "the OPT record")?);
    while options.remaining() > 0 {
        let _code = options.u16("an EDNS option").map_err(|_| FormatError::BadOptions)?;
        let len = options.u16("an EDNS option").map_err(|_| FormatError::BadOptions)?;
        options.bytes(usize::from(len), "an EDNS option").map_err(|_| FormatError::BadOptions)?;
    }
    Ok((Edns { udp_payload_size, dnssec_ok: flags & DNSSEC_OK_BIT != 0 }, version))
}

/// Writes the answer to a valid query that keyturn gives itself (REFUSED, SERVFAIL, or an empty
/// NOERROR/NXDOMAIN): the query's id and RD bit, QR and RA set, the question echoed, and an OPT
/// record when the query had one.
#[must_use]
pub fn response(query: &Query, rcode: Rcode) -> Vec<u8> {
    let mut out = Vec::with_capacity(HEADER_LEN + MAX_WIRE_NAME + 4 + 11);
    let rd = if query.recursion_desired { FLAG_RD } else { 0 };
    push_header(&mut out, query.id, FLAG_QR | FLAG_RA | rd | rcode.code(), query.edns.is_some());
    push_question(&mut out, &query.name, query.qtype);
    if let Some(edns) = query.edns {
        push_opt(&mut out, ADVERTISED_UDP_PAYLOAD, 0, edns.dnssec_ok);
    }
    out
}

/// An address the upstream resolver gave for the name asked for.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Resolved {
    /// The address, from an A or AAAA record.
    pub addr: IpAddr,
    /// The least TTL of the address record and the CNAMEs leading to it, in seconds.
    pub ttl: u32,
    /// The name the agent asked for (not a CNAME target).
    pub name: Name,
}

/// What keyturn takes from the upstream's answer to a forwarded query.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Answer {
    /// The response code, extended by the OPT record when there is one (up to 12 bits).
    pub rcode: u16,
    /// The addresses of the name asked for, reached directly or through at most 8 CNAMEs.
    pub addresses: Vec<Resolved>,
    /// The TC bit: the answer did not fit, and carries no addresses (ask again over TCP).
    pub truncated: bool,
}

/// Why the upstream's answer was not used.
#[derive(Clone, Debug, PartialEq, Eq, Error)]
pub enum AnswerError {
    /// Not even a header.
    #[error("the answer is {len} bytes long, shorter than a DNS header (12 bytes)")]
    TooShort {
        /// The message length.
        len: usize,
    },
    /// Not the id of the query sent.
    #[error("the answer's id {got} is not the id {expected} of the query sent")]
    WrongId {
        /// The id sent.
        expected: u16,
        /// The id received.
        got: u16,
    },
    /// The QR bit is clear.
    #[error("the message is a query (QR bit clear), not an answer")]
    NotResponse,
    /// An opcode other than QUERY.
    #[error("the answer has opcode {0}, not QUERY (0)")]
    Opcode(u16),
    /// Not exactly one question.
    #[error("the answer has {0} questions; exactly one was asked")]
    QuestionCount(u16),
    /// A question other than the one asked.
    #[error("the answer's question is not the question asked")]
    QuestionMismatch,
    /// More than one OPT record.
    #[error("the answer has more than one OPT record")]
    DuplicateOpt,
    /// The message is not well-formed.
    #[error(transparent)]
    Format(#[from] FormatError),
}

/// Parses the upstream's answer to `query`, forwarded under `sent_id`. The answer must repeat
/// the question exactly (the name in any case); only A and AAAA records of class IN owned by the
/// question's name, or by a name reached from it through CNAMEs in the answer section, are taken.
///
/// # Errors
///
/// An [`AnswerError`] when the message is malformed or does not answer `query`.
pub fn parse_answer(query: &Query, sent_id: u16, bytes: &[u8]) -> Result<Answer, AnswerError> {
    let mut reader = Reader::new(bytes);
    let header = Header::read(&mut reader).map_err(|_| AnswerError::TooShort { len: bytes.len() })?;
    if header.id != sent_id {
        return Err(AnswerError::WrongId { expected: sent_id, got: header.id });
    }
    if header.flags & FLAG_QR == 0 {
        return Err(AnswerError::NotResponse);
    }
    let opcode = (header.flags & OPCODE_MASK) >> OPCODE_SHIFT;
    if opcode != 0 {
        return Err(AnswerError::Opcode(opcode));
    }
    if header.questions != 1 {
        return Err(AnswerError::QuestionCount(header.questions));
    }
    let asked = name_wire(&query.name);
    let name = reader.name(Compression::Allowed)?;
    let qtype = reader.u16("the question")?;
    let qclass = reader.u16("the question")?;
    if name != asked || qtype != query.qtype || qclass != CLASS_IN {
        return Err(AnswerError::QuestionMismatch);
    }
    let mut rcode = header.flags & RCODE_MASK;
    if header.flags & FLAG_TC != 0 {
        return Ok(Answer { rcode, addresses: Vec::new(), truncated: true });
    }
    let mut records = Vec::new();
    for _ in 0..header.answers {
        if let Some(record) = AnswerRecord::read(&mut reader)? {
            records.push(record);
        }
    }
    for _ in 0..header.authority {
        RecordHead::read(&mut reader)?;
    }
    let mut seen_opt = false;
    for _ in 0..header.additional {
        let head = RecordHead::read(&mut reader)?;
        if head.rtype == TYPE_OPT {
            if seen_opt {
                return Err(AnswerError::DuplicateOpt);
            }
            seen_opt = true;
            let [extended, ..] = head.ttl;
            rcode |= u16::from(extended) << 4;
        }
    }
    if reader.remaining() > 0 {
        return Err(FormatError::TrailingBytes { count: reader.remaining() }.into());
    }
    Ok(Answer { rcode, addresses: addresses(query, &asked, &records), truncated: false })
}

/// The addresses of `asked` in `records`, following CNAMEs from it.
fn addresses(query: &Query, asked: &[u8], records: &[AnswerRecord]) -> Vec<Resolved> {
    // The names on the CNAME chain, each with the least TTL of the CNAMEs leading to it.
    let mut chain: Vec<(&[u8], u32)> = vec![(asked, u32::MAX)];
    for _ in 0..MAX_CNAMES {
        let Some(&(current, ttl)) = chain.last() else {
            break;
        };
        let Some((target, cname_ttl)) = records.iter().find_map(|record| match &record.data {
            RecordData::Alias(target) if record.owner == current => Some((target.as_slice(), record.ttl)),
            _ => None,
        }) else {
            break;
        };
        if chain.iter().any(|&(name, _)| name == target) {
            break;
        }
        chain.push((target, ttl.min(cname_ttl)));
    }
    records
        .iter()
        .filter_map(|record| {
            let RecordData::Address(addr) = record.data else {
                return None;
            };
            let &(_, path_ttl) = chain.iter().find(|&&(name, _)| name == record.owner)?;
            Some(Resolved { addr, ttl: record.ttl.min(path_ttl), name: query.name.clone() })
        })
        .collect()
}

/// Gives `bytes`, a DNS message, the id `id`: the resolver relays the upstream's answer to the
/// agent under the agent's id. A message shorter than 2 bytes (never a parsed answer) is left
/// alone.
pub fn rewrite_id(bytes: &mut [u8], id: u16) {
    if let Some(first) = bytes.first_chunk_mut::<2>() {
        *first = id.to_be_bytes();
    }
}

/// A message header.
struct Header {
    id: u16,
    flags: u16,
    questions: u16,
    answers: u16,
    authority: u16,
    additional: u16,
}

impl Header {
    fn read(reader: &mut Reader<'_>) -> Result<Self, FormatError> {
        Ok(Self {
            id: reader.u16("the header")?,
            flags: reader.u16("the header")?,
            questions: reader.u16("the header")?,
            answers: reader.u16("the header")?,
            authority: reader.u16("the header")?,
            additional: reader.u16("the header")?,
        })
    }
}

/// The fixed part of a resource record, its data skipped.
struct RecordHead<'a> {
    /// The owner name in lowercase wire form.
    owner: Vec<u8>,
    rtype: u16,
    class: u16,
    ttl: [u8; 4],
    /// Where the data starts in the message.
    data_start: usize,
    data: &'a [u8],
}

impl<'a> RecordHead<'a> {
    fn read(reader: &mut Reader<'a>) -> Result<Self, FormatError> {
        let owner = reader.name(Compression::Allowed)?;
        let rtype = reader.u16("a record")?;
        let class = reader.u16("a record")?;
        let ttl = reader.array::<4>("a record")?;
        let data_len = reader.u16("a record")?;
        let data_start = reader.pos;
        let data = reader.bytes(usize::from(data_len), "a record's data")?;
        Ok(Self { owner, rtype, class, ttl, data_start, data })
    }
}

/// An address or CNAME record of class IN from an answer section.
struct AnswerRecord {
    /// The owner name in lowercase wire form.
    owner: Vec<u8>,
    /// The TTL, 0 when its top bit is set (RFC 2181, section 8).
    ttl: u32,
    data: RecordData,
}

enum RecordData {
    Address(IpAddr),
    /// A CNAME target in lowercase wire form.
    Alias(Vec<u8>),
}

impl AnswerRecord {
    /// Reads one record; `None` for the records keyturn does not look at.
    fn read(reader: &mut Reader<'_>) -> Result<Option<Self>, FormatError> {
        let head = RecordHead::read(reader)?;
        if head.class != CLASS_IN {
            return Ok(None);
        }
        let bad_data = || FormatError::BadRecordData { rtype: head.rtype, len: head.data.len() };
        let data = match head.rtype {
            TYPE_A => {
                let octets = <[u8; 4]>::try_from(head.data).map_err(|_| bad_data())?;
                RecordData::Address(IpAddr::V4(Ipv4Addr::from(octets)))
            }
            TYPE_AAAA => {
                let octets = <[u8; 16]>::try_from(head.data).map_err(|_| bad_data())?;
                RecordData::Address(IpAddr::V6(Ipv6Addr::from(octets)))
            }
            TYPE_CNAME => {
                let mut target = Reader { msg: reader.msg, pos: head.data_start };
                let name = target.name(Compression::Allowed)?;
                if target.pos != reader.pos {
                    return Err(bad_data());
                }
                RecordData::Alias(name)
            }
            _ => return Ok(None),
        };
        let ttl = u32::from_be_bytes(head.ttl);
        let ttl = if ttl > 0x7fff_ffff { 0 } else { ttl };
        Ok(Some(Self { owner: head.owner, ttl, data }))
    }
}

/// Whether names may use compression pointers.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Compression {
    Allowed,
    Forbidden,
}

/// Reads a message front to back; `pos` never passes the end of `msg`.
struct Reader<'a> {
    msg: &'a [u8],
    pos: usize,
}

impl<'a> Reader<'a> {
    fn new(msg: &'a [u8]) -> Self {
        Self { msg, pos: 0 }
    }

    fn remaining(&self) -> usize {
        self.msg.len().saturating_sub(self.pos)
    }

    fn rest(&self) -> &'a [u8] {
        self.msg.get(self.pos..).unwrap_or_default()
    }

    fn bytes(&mut self, len: usize, what: &'static str) -> Result<&'a [u8], FormatError> {
        let (head, _) = self.rest().split_at_checked(len).ok_or(FormatError::Truncated { what })?;
        self.pos += len;
        Ok(head)
    }

    fn array<const N: usize>(&mut self, what: &'static str) -> Result<[u8; N], FormatError> {
        let (head, _) = self.rest().split_first_chunk::<N>().ok_or(FormatError::Truncated { what })?;
        self.pos += N;
        Ok(*head)
    }

    fn u16(&mut self, what: &'static str) -> Result<u16, FormatError> {
        self.array(what).map(u16::from_be_bytes)
    }

    /// Reads a name, following compression pointers when allowed, and returns it in lowercase
    /// wire form. Each pointer must point before the labels it continues, so the reading ends;
    /// at most [`MAX_POINTERS`] are followed and the name is at most 255 bytes, so it ends soon.
    fn name(&mut self, compression: Compression) -> Result<Vec<u8>, FormatError> {
        let mut wire = Vec::with_capacity(64);
        let mut cursor = Reader { msg: self.msg, pos: self.pos };
        // Where the labels being read start: pointers must point before it.
        let mut segment = self.pos;
        // Where this reader goes on after the name, once a pointer has been followed.
        let mut resume = None;
        let mut pointers = 0;
        loop {
            let at = cursor.pos;
            let [len] = cursor.array::<1>("a name")?;
            match len & 0xc0 {
                0x00 => {
                    let label = cursor.bytes(usize::from(len), "a name")?;
                    if wire.len() + 1 + label.len() > MAX_WIRE_NAME {
                        return Err(FormatError::NameTooLong);
                    }
                    wire.push(len);
                    wire.extend(label.iter().map(u8::to_ascii_lowercase));
                    if len == 0 {
                        self.pos = resume.unwrap_or(cursor.pos);
                        return Ok(wire);
                    }
                }
                0xc0 => {
                    if compression == Compression::Forbidden {
                        return Err(FormatError::CompressionPointer { at });
                    }
                    let [low] = cursor.array::<1>("a compression pointer")?;
                    let target = usize::from(u16::from_be_bytes([len & 0x3f, low]));
                    if target >= self.msg.len() {
                        return Err(FormatError::PointerOutOfBounds { at, target });
                    }
                    if target >= segment {
                        return Err(FormatError::PointerNotBackward { at, target });
                    }
                    pointers += 1;
                    if pointers > MAX_POINTERS {
                        return Err(FormatError::TooManyPointers);
                    }
                    resume.get_or_insert(cursor.pos);
                    segment = target;
                    cursor.pos = target;
                }
                _ => return Err(FormatError::ReservedLabelType { at, byte: len }),
            }
        }
    }
}

/// The labels of a name in wire form, as [`Reader::name`] returns it.
fn wire_labels(mut wire: &[u8]) -> impl Iterator<Item = &[u8]> {
    std::iter::from_fn(move || {
        let (&len, rest) = wire.split_first()?;
        let (label, rest) = rest.split_at_checked(usize::from(len))?;
        wire = rest;
        (!label.is_empty()).then_some(label)
    })
}

/// `name` in wire form (lowercase, as every [`Name`] is).
fn name_wire(name: &Name) -> Vec<u8> {
    let mut out = Vec::with_capacity(name.as_str().len() + 2);
    push_name(&mut out, name);
    out
}

fn push_u16(out: &mut Vec<u8>, value: u16) {
    out.extend_from_slice(&value.to_be_bytes());
}

/// A header for one question and, if `opt`, one additional record.
fn push_header(out: &mut Vec<u8>, id: u16, flags: u16, opt: bool) {
    for value in [id, flags, 1, 0, 0, u16::from(opt)] {
        push_u16(out, value);
    }
}

fn push_name(out: &mut Vec<u8>, name: &Name) {
    for label in name.labels() {
        #[expect(clippy::cast_possible_truncation, reason = "a `Name` label is at most 63 bytes")]
        out.push(label.len() as u8);
        out.extend_from_slice(label.as_bytes());
    }
    out.push(0);
}

fn push_question(out: &mut Vec<u8>, name: &Name, qtype: u16) {
    push_name(out, name);
    push_u16(out, qtype);
    push_u16(out, CLASS_IN);
}

/// An OPT record for the root name, EDNS version 0, without options.
fn push_opt(out: &mut Vec<u8>, udp_payload_size: u16, extended_rcode: u8, dnssec_ok: bool) {
    out.push(0);
    push_u16(out, TYPE_OPT);
    push_u16(out, udp_payload_size);
    out.extend_from_slice(&[extended_rcode, 0, if dnssec_ok { DNSSEC_OK_BIT } else { 0 }, 0]);
    push_u16(out, 0);
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `example.com IN A`, id 0x1234, RD set.
    const A_QUERY: [u8; 29] = [
        0x12, 0x34, 0x01, 0x00, 0, 1, 0, 0, 0, 0, 0, 0, //
        7, b'e', b'x', b'a', b'm', b'p', b'l', b'e', 3, b'c', b'o', b'm', 0, //
        0, 1, 0, 1,
    ];
    /// An OPT record: payload 1232, DO set, no options.
    const OPT_DO: [u8; 11] = [0, 0, 41, 0x04, 0xd0, 0, 0, 0x80, 0, 0, 0];
    const EXAMPLE: &[u8] = b"\x07example\x03com\x00";
    /// A pointer to the question's name, at offset 12.
    const TO_QUESTION: &[u8] = &[0xc0, 12];

    fn udp(bytes: &[u8]) -> Result<Query, QueryError> {
        parse_query(bytes, Transport::Udp)
    }

    fn problem(bytes: &[u8]) -> QueryProblem {
        udp(bytes).unwrap_err().problem().clone()
    }

    fn name(text: &str) -> Name {
        Name::parse(text).unwrap()
    }

    /// `A_QUERY` with an OPT record appended.
    fn with_opt(opt: &[u8]) -> Vec<u8> {
        let mut bytes = A_QUERY.to_vec();
        bytes[11] = 1;
        bytes.extend_from_slice(opt);
        bytes
    }

    fn set_u16(bytes: &mut [u8], at: usize, value: u16) {
        bytes[at..at + 2].copy_from_slice(&value.to_be_bytes());
    }

    /// A query for the wire name `qname`, id 0x1234, RD set.
    fn query_for(qname: &[u8], qtype: u16, qclass: u16) -> Vec<u8> {
        let mut bytes = A_QUERY[..12].to_vec();
        bytes.extend_from_slice(qname);
        bytes.extend_from_slice(&qtype.to_be_bytes());
        bytes.extend_from_slice(&qclass.to_be_bytes());
        bytes
    }

    /// A wire name of labels of the given lengths, made of `a`s.
    fn wire_name(lengths: &[usize]) -> Vec<u8> {
        let mut wire = Vec::new();
        for &len in lengths {
            wire.push(u8::try_from(len).unwrap());
            wire.extend(std::iter::repeat_n(b'a', len));
        }
        wire.push(0);
        wire
    }

    /// Checks an error answer's header and returns the bytes after it.
    fn check_answer(err: &QueryError, flags: u16, counts: [u16; 4]) -> Vec<u8> {
        let answer = err.answer().expect("an answer");
        assert_eq!(answer[..2], [0x12, 0x34]);
        assert_eq!(u16::from_be_bytes([answer[2], answer[3]]), flags, "flags of {answer:02x?}");
        for (index, count) in counts.into_iter().enumerate() {
            let at = 4 + 2 * index;
            assert_eq!(u16::from_be_bytes([answer[at], answer[at + 1]]), count, "count {index}");
        }
        answer[12..].to_vec()
    }

    fn the_query() -> Query {
        udp(&A_QUERY).unwrap()
    }

    #[test]
    fn parses_a_plain_query_and_writes_it_back() {
        let query = the_query();
        assert_eq!(
            query,
            Query { id: 0x1234, name: name("example.com"), qtype: 1, recursion_desired: true, edns: None }
        );
        assert_eq!(query.to_bytes(0x1234), A_QUERY);
        let fresh = query.to_bytes(0xbeef);
        assert_eq!(fresh[..2], [0xbe, 0xef]);
        assert_eq!(fresh[2..], A_QUERY[2..]);
        assert_eq!(parse_query(&A_QUERY, Transport::Tcp).unwrap(), query);
    }

    #[test]
    fn lowercases_the_question_name() {
        let query = udp(&query_for(b"\x07EXAMPLE\x03CoM\x00", 28, 1)).unwrap();
        assert_eq!(query.name, name("example.com"));
        assert_eq!(query.qtype, 28);
    }

    #[test]
    fn parses_edns_and_forwards_only_size_and_do() {
        let bytes = with_opt(&OPT_DO);
        let query = udp(&bytes).unwrap();
        assert_eq!(query.edns, Some(Edns { udp_payload_size: 1232, dnssec_ok: true }));
        assert_eq!(query.to_bytes(0x1234), bytes);

        // An option (a cookie) and the other flag bits are not forwarded.
        let mut opt = vec![0, 0, 41, 0x10, 0x00, 0, 0, 0x7f, 0xff, 0, 12, 0, 10, 0, 8];
        opt.extend_from_slice(b"cookie!!");
        let query = udp(&with_opt(&opt)).unwrap();
        assert_eq!(query.edns, Some(Edns { udp_payload_size: 4096, dnssec_ok: false }));
        let mut expected = with_opt(&OPT_DO);
        expected[12 + 17 + 3..12 + 17 + 5].copy_from_slice(&4096u16.to_be_bytes());
        expected[12 + 17 + 7] = 0;
        assert_eq!(query.to_bytes(0x1234), expected);
    }

    #[test]
    fn refuses_question_counts_other_than_one() {
        let mut none = A_QUERY[..12].to_vec();
        set_u16(&mut none, 4, 0);
        let err = udp(&none).unwrap_err();
        assert_eq!(err.problem(), &QueryProblem::QuestionCount(0));
        assert_eq!(err.rcode(), Some(1));
        assert!(check_answer(&err, 0x8181, [0, 0, 0, 0]).is_empty());

        let mut twenty = A_QUERY.to_vec();
        set_u16(&mut twenty, 4, 20);
        for _ in 1..20 {
            twenty.extend_from_slice(&A_QUERY[12..]);
        }
        let err = udp(&twenty).unwrap_err();
        assert_eq!(err.problem(), &QueryProblem::QuestionCount(20));
        assert!(check_answer(&err, 0x8181, [0, 0, 0, 0]).is_empty());
    }

    #[test]
    fn every_truncation_is_an_error() {
        let mut opt = OPT_DO.to_vec();
        opt[10] = 8;
        opt.extend_from_slice(&[0, 10, 0, 4, 1, 2, 3, 4]);
        let full = with_opt(&opt);
        assert!(udp(&full).is_ok());
        for len in 0..full.len() {
            let err = udp(&full[..len]).unwrap_err();
            if len < 12 {
                assert_eq!(err.problem(), &QueryProblem::TooShort { len });
                assert_eq!(err.answer(), None);
                assert_eq!(err.rcode(), None);
            } else {
                assert_eq!(err.rcode(), Some(1), "{len}: {err}");
                assert!(check_answer(&err, 0x8181, [0, 0, 0, 0]).is_empty());
            }
        }
        assert_eq!(problem(&A_QUERY[..20]), QueryProblem::Format(FormatError::Truncated { what: "a name" }));
        assert_eq!(problem(&A_QUERY[..27]).to_string(), "the message ends inside the question");
    }

    #[test]
    fn refuses_compression_pointers() {
        // `www` then a pointer to the header (offset 12 = the name itself is refused just the same).
        let err = udp(&query_for(b"\x03www\xc0\x0c", 1, 1)).unwrap_err();
        assert_eq!(err.problem(), &QueryProblem::Format(FormatError::CompressionPointer { at: 16 }));
        assert_eq!(err.rcode(), Some(1));
        // A pointer to itself.
        let err = udp(&query_for(&[0xc0, 12], 1, 1)).unwrap_err();
        assert_eq!(err.problem(), &QueryProblem::Format(FormatError::CompressionPointer { at: 12 }));
        // In the OPT record's owner.
        let mut opt = OPT_DO.to_vec();
        opt.splice(0..1, [0xc0, 12]);
        assert_eq!(
            problem(&with_opt(&opt)),
            QueryProblem::Format(FormatError::CompressionPointer { at: 29 })
        );
        assert!(
            problem(&query_for(b"\x40abc\x00", 1, 1)).to_string().contains("reserved label type"),
            "0x40 is a reserved label type"
        );
    }

    #[test]
    fn never_answers_an_answer_or_a_runt() {
        let mut bytes = A_QUERY.to_vec();
        bytes[2] |= 0x80;
        let err = udp(&bytes).unwrap_err();
        assert_eq!(err.problem(), &QueryProblem::IsResponse);
        assert_eq!(err.answer(), None);
        assert_eq!(udp(&[0; 11]).unwrap_err().answer(), None);
        assert_eq!(udp(&[]).unwrap_err().answer(), None);
    }

    #[test]
    fn answers_other_opcodes_with_notimp() {
        let mut bytes = A_QUERY.to_vec();
        bytes[2] = 0x11; // opcode 2 (STATUS), RD
        let err = udp(&bytes).unwrap_err();
        assert_eq!(err.problem(), &QueryProblem::Opcode(2));
        assert_eq!(err.rcode(), Some(4));
        assert!(check_answer(&err, 0x9184, [0, 0, 0, 0]).is_empty());
    }

    #[test]
    fn refuses_malformed_headers_with_formerr() {
        let cases: [(usize, u16, QueryProblem); 4] = [
            (2, 0x0300, QueryProblem::TruncatedFlag),
            (6, 1, QueryProblem::UnexpectedRecords { answers: 1, authority: 0 }),
            (8, 1, QueryProblem::UnexpectedRecords { answers: 0, authority: 1 }),
            (10, 2, QueryProblem::AdditionalCount(2)),
        ];
        for (at, value, expected) in cases {
            let mut bytes = with_opt(&OPT_DO);
            bytes.extend_from_slice(&OPT_DO);
            set_u16(&mut bytes, at, value);
            let err = udp(&bytes).unwrap_err();
            assert_eq!(err.problem(), &expected);
            assert_eq!(err.rcode(), Some(1));
        }
    }

    #[test]
    fn the_additional_record_must_be_a_root_opt() {
        let mut a_record = vec![0xc0, 12];
        a_record.extend_from_slice(&[0, 1, 0, 1, 0, 0, 0, 60, 0, 4, 1, 2, 3, 4]);
        assert_eq!(
            problem(&with_opt(&a_record)),
            QueryProblem::Format(FormatError::CompressionPointer { at: 29 })
        );
        a_record.splice(0..2, EXAMPLE.iter().copied());
        assert_eq!(problem(&with_opt(&a_record)), QueryProblem::NotOpt(1));

        let mut not_root = OPT_DO.to_vec();
        not_root.splice(0..1, b"\x01a\x00".iter().copied());
        assert_eq!(problem(&with_opt(&not_root)), QueryProblem::OptOwner);

        let mut bad_options = OPT_DO.to_vec();
        bad_options[10] = 3;
        bad_options.extend_from_slice(&[0, 10, 0]);
        assert_eq!(problem(&with_opt(&bad_options)), QueryProblem::Format(FormatError::BadOptions));
        bad_options[10] = 4;
        bad_options.push(5);
        assert_eq!(problem(&with_opt(&bad_options)), QueryProblem::Format(FormatError::BadOptions));
    }

    #[test]
    fn answers_other_edns_versions_with_badvers() {
        let mut opt = OPT_DO.to_vec();
        opt[6] = 1;
        let err = udp(&with_opt(&opt)).unwrap_err();
        assert_eq!(err.problem(), &QueryProblem::EdnsVersion(1));
        assert_eq!(err.rcode(), Some(16));
        let rest = check_answer(&err, 0x8180, [1, 0, 0, 1]);
        assert_eq!(rest[..17], A_QUERY[12..]);
        assert_eq!(rest[17..], [0, 0, 41, 0x04, 0xd0, 1, 0, 0x80, 0, 0, 0]);
    }

    #[test]
    fn refuses_other_classes_echoing_the_question() {
        let bytes = query_for(b"\x07Example\x03com\x00", 1, 3);
        let err = udp(&bytes).unwrap_err();
        assert_eq!(err.problem(), &QueryProblem::Class(3));
        assert_eq!(err.rcode(), Some(5));
        assert_eq!(check_answer(&err, 0x8185, [1, 0, 0, 0]), bytes[12..]);

        let mut bytes = with_opt(&OPT_DO);
        bytes[28] = 255;
        let err = udp(&bytes).unwrap_err();
        assert_eq!(err.problem(), &QueryProblem::Class(255));
        let rest = check_answer(&err, 0x8185, [1, 0, 0, 1]);
        assert_eq!(rest[17..], OPT_DO);
    }

    #[test]
    fn refuses_names_that_break_the_name_rules() {
        let err = udp(&query_for(b"\x03a*b\x03com\x00", 1, 1)).unwrap_err();
        assert_eq!(err.problem(), &QueryProblem::BadName(NameError::BadCharacter { character: '*' }));
        assert_eq!(err.rcode(), Some(5));
        assert_eq!(
            err.to_string(),
            "the question name is refused: `*` is not allowed in a name (letters, digits, `-` and `_` only)"
        );
        assert!(matches!(
            problem(&query_for(b"\x02\xc3\xa9\x03com\x00", 1, 1)),
            QueryProblem::BadName(NameError::NotAscii { .. })
        ));
        assert_eq!(
            problem(&query_for(b"\x03a.b\x00", 1, 1)),
            QueryProblem::BadName(NameError::BadCharacter { character: '.' })
        );
        // The root name: no label a policy could allow.
        let err = udp(&query_for(&[0], 2, 1)).unwrap_err();
        assert_eq!(err.problem(), &QueryProblem::BadName(NameError::Empty));
        assert_eq!(check_answer(&err, 0x8185, [1, 0, 0, 0]), [0, 0, 2, 0, 1]);
    }

    #[test]
    fn wire_names_may_be_255_bytes_not_256() {
        let longest = wire_name(&[63, 63, 63, 61]);
        assert_eq!(longest.len(), 255);
        let query = udp(&query_for(&longest, 1, 1)).unwrap();
        assert_eq!(query.name.as_str().len(), 253);
        assert_eq!(udp(&query.to_bytes(1)).unwrap().name, query.name);

        let too_long = wire_name(&[63, 63, 63, 62]);
        assert_eq!(too_long.len(), 256);
        let err = udp(&query_for(&too_long, 1, 1)).unwrap_err();
        assert_eq!(err.problem(), &QueryProblem::Format(FormatError::NameTooLong));
        assert_eq!(err.rcode(), Some(1));
    }

    #[test]
    fn refuses_trailing_bytes() {
        let mut bytes = A_QUERY.to_vec();
        bytes.push(0);
        assert_eq!(problem(&bytes), QueryProblem::Format(FormatError::TrailingBytes { count: 1 }));
        let mut bytes = with_opt(&OPT_DO);
        bytes.extend_from_slice(b"junk");
        assert_eq!(problem(&bytes), QueryProblem::Format(FormatError::TrailingBytes { count: 4 }));
    }

    #[test]
    fn bounds_udp_queries_by_their_edns_size() {
        let mut opt = OPT_DO.to_vec();
        opt[3..5].copy_from_slice(&512u16.to_be_bytes());
        opt[9..11].copy_from_slice(&564u16.to_be_bytes());
        opt.extend_from_slice(&[0, 12, 2, 48]); // padding, 560 bytes
        opt.extend(std::iter::repeat_n(0, 560));
        let bytes = with_opt(&opt);
        assert_eq!(bytes.len(), 604);
        let err = udp(&bytes).unwrap_err();
        assert_eq!(err.problem(), &QueryProblem::TooLong { len: 604, limit: 512 });
        assert_eq!(err.rcode(), Some(1));
        assert!(parse_query(&bytes, Transport::Tcp).is_ok());
        opt[3..5].copy_from_slice(&1232u16.to_be_bytes());
        assert!(udp(&with_opt(&opt)).is_ok());
        // A size below 512 still allows 512 bytes.
        let mut small = OPT_DO.to_vec();
        small[3..5].copy_from_slice(&0u16.to_be_bytes());
        assert_eq!(udp(&with_opt(&small)).unwrap().edns.unwrap().udp_payload_size, 0);
    }

    #[test]
    fn writes_responses_to_valid_queries() {
        let query = the_query();
        let refused = response(&query, Rcode::Refused);
        assert_eq!(refused[..12], [0x12, 0x34, 0x81, 0x85, 0, 1, 0, 0, 0, 0, 0, 0]);
        assert_eq!(refused[12..], A_QUERY[12..]);
        let parsed = parse_answer(&query, 0x1234, &refused).unwrap();
        assert_eq!(parsed, Answer { rcode: 5, addresses: Vec::new(), truncated: false });

        let with_edns = udp(&with_opt(&OPT_DO)).unwrap();
        let servfail = response(&with_edns, Rcode::ServFail);
        assert_eq!(servfail[..12], [0x12, 0x34, 0x81, 0x82, 0, 1, 0, 0, 0, 0, 0, 1]);
        assert_eq!(servfail[29..], OPT_DO);
        assert_eq!(parse_answer(&with_edns, 0x1234, &servfail).unwrap().rcode, 2);
        for (rcode, code) in
            [(Rcode::FormErr, 1), (Rcode::ServFail, 2), (Rcode::NotImp, 4), (Rcode::Refused, 5)]
        {
            assert_eq!(rcode.code(), code);
            assert_eq!(parse_answer(&query, 0x1234, &response(&query, rcode)).unwrap().rcode, code);
        }
    }

    /// An upstream answer to `the_query()` (id 0x1234) with these records in the answer section.
    fn answer_with(records: &[Vec<u8>]) -> Vec<u8> {
        let mut bytes = A_QUERY.to_vec();
        bytes[2] = 0x81;
        bytes[3] = 0x80;
        set_u16(&mut bytes, 6, u16::try_from(records.len()).unwrap());
        for record in records {
            bytes.extend_from_slice(record);
        }
        bytes
    }

    /// A record of class IN.
    fn record(owner: &[u8], rtype: u16, ttl: u32, data: &[u8]) -> Vec<u8> {
        let mut bytes = owner.to_vec();
        bytes.extend_from_slice(&rtype.to_be_bytes());
        bytes.extend_from_slice(&CLASS_IN.to_be_bytes());
        bytes.extend_from_slice(&ttl.to_be_bytes());
        bytes.extend_from_slice(&u16::try_from(data.len()).unwrap().to_be_bytes());
        bytes.extend_from_slice(data);
        bytes
    }

    fn resolved(addr: &str, ttl: u32) -> Resolved {
        Resolved { addr: addr.parse().unwrap(), ttl, name: name("example.com") }
    }

    fn answer_error(bytes: &[u8]) -> AnswerError {
        parse_answer(&the_query(), 0x1234, bytes).unwrap_err()
    }

    #[test]
    fn takes_a_plain_a_record() {
        let bytes = answer_with(&[record(TO_QUESTION, TYPE_A, 300, &[93, 184, 216, 34])]);
        let answer = parse_answer(&the_query(), 0x1234, &bytes).unwrap();
        assert_eq!(
            answer,
            Answer { rcode: 0, addresses: vec![resolved("93.184.216.34", 300)], truncated: false }
        );
    }

    #[test]
    fn takes_aaaa_records() {
        let query = udp(&query_for(EXAMPLE, TYPE_AAAA, 1)).unwrap();
        let mut bytes = answer_with(&[
            record(EXAMPLE, TYPE_AAAA, 60, &[0x20, 1, 0xd, 0xb8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1]),
            record(
                TO_QUESTION,
                TYPE_AAAA,
                0x8000_0000,
                &[0x20, 1, 0xd, 0xb8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 2],
            ),
        ]);
        bytes[26] = TYPE_AAAA.to_be_bytes()[1];
        let answer = parse_answer(&query, 0x1234, &bytes).unwrap();
        assert_eq!(answer.addresses, [resolved("2001:db8::1", 60), resolved("2001:db8::2", 0)]);
    }

    #[test]
    fn follows_a_compressed_cname_chain_keeping_the_least_ttl() {
        // example.com CNAME www.cdn.net (300); www.cdn.net CNAME edge.cdn.net (60);
        // edge.cdn.net A 1.2.3.4 (3600); example.com AAAA ::1 (100).
        let bytes = answer_with(&[
            record(TO_QUESTION, TYPE_CNAME, 300, b"\x03www\x03cdn\x03net\x00"), // data at 41
            record(&[0xc0, 41], TYPE_CNAME, 60, b"\x04edge\xc0\x2d"),           // data at 66
            record(&[0xc0, 66], TYPE_A, 3600, &[1, 2, 3, 4]),
            record(TO_QUESTION, TYPE_AAAA, 100, &std::net::Ipv6Addr::LOCALHOST.octets()),
        ]);
        let answer = parse_answer(&the_query(), 0x1234, &bytes).unwrap();
        assert_eq!(answer.addresses, [resolved("1.2.3.4", 60), resolved("::1", 100)]);
    }

    #[test]
    fn a_cname_loop_ends_the_chain() {
        let bytes = answer_with(&[
            record(EXAMPLE, TYPE_CNAME, 50, b"\x01a\x03net\x00"),
            record(b"\x01a\x03net\x00", TYPE_CNAME, 40, EXAMPLE),
            record(b"\x01a\x03NET\x00", TYPE_A, 300, &[1, 1, 1, 1]),
            record(EXAMPLE, TYPE_A, 30, &[2, 2, 2, 2]),
        ]);
        let answer = parse_answer(&the_query(), 0x1234, &bytes).unwrap();
        assert_eq!(answer.addresses, [resolved("1.1.1.1", 50), resolved("2.2.2.2", 30)]);
    }

    #[test]
    fn follows_at_most_eight_cnames() {
        let hop = |index: u8| vec![2, b'n', b'a' + index, 3, b'n', b'e', b't', 0];
        let mut records = vec![record(EXAMPLE, TYPE_CNAME, 1000, &hop(1))];
        for index in 1..=9 {
            records.push(record(&hop(index), TYPE_CNAME, 1000, &hop(index + 1)));
        }
        records.push(record(&hop(8), TYPE_A, 70, &[8, 8, 8, 8]));
        records.push(record(&hop(9), TYPE_A, 70, &[9, 9, 9, 9]));
        let answer = parse_answer(&the_query(), 0x1234, &answer_with(&records)).unwrap();
        assert_eq!(answer.addresses, [resolved("8.8.8.8", 70)]);
    }

    #[test]
    fn ignores_records_of_other_owners_and_classes() {
        let mut chaos = record(EXAMPLE, TYPE_A, 60, &[3, 3, 3, 3]);
        chaos[EXAMPLE.len() + 3] = 3;
        let bytes = answer_with(&[
            record(b"\x04evil\x03com\x00", TYPE_A, 60, &[6, 6, 6, 6]),
            record(b"\x04evil\x03com\x00", TYPE_CNAME, 60, b"\x01x\x00"),
            record(b"\x03www\x07example\x03com\x00", TYPE_A, 60, &[7, 7, 7, 7]),
            chaos,
            record(TO_QUESTION, 16, 60, b"\x05hello"),
            record(TO_QUESTION, TYPE_A, 60, &[4, 4, 4, 4]),
        ]);
        let answer = parse_answer(&the_query(), 0x1234, &bytes).unwrap();
        assert_eq!(answer.addresses, [resolved("4.4.4.4", 60)]);
    }

    #[test]
    fn refuses_answers_to_other_questions() {
        let good = answer_with(&[record(TO_QUESTION, TYPE_A, 60, &[4, 4, 4, 4])]);
        assert_eq!(
            parse_answer(&the_query(), 0x4321, &good),
            Err(AnswerError::WrongId { expected: 0x4321, got: 0x1234 })
        );
        let mut query = good.clone();
        query[2] &= 0x7f;
        assert_eq!(answer_error(&query), AnswerError::NotResponse);
        let mut other_name = good.clone();
        other_name[13] = b'f';
        assert_eq!(answer_error(&other_name), AnswerError::QuestionMismatch);
        let mut other_type = good.clone();
        other_type[26] = 28;
        assert_eq!(answer_error(&other_type), AnswerError::QuestionMismatch);
        let mut other_class = good.clone();
        other_class[28] = 3;
        assert_eq!(answer_error(&other_class), AnswerError::QuestionMismatch);
        let mut no_question = good.clone();
        no_question[5] = 0;
        assert_eq!(answer_error(&no_question), AnswerError::QuestionCount(0));
        let mut other_opcode = good.clone();
        other_opcode[2] |= 0x20;
        assert_eq!(answer_error(&other_opcode), AnswerError::Opcode(4));
        let mut upper = good;
        upper[13..20].copy_from_slice(b"EXAMPLE");
        assert_eq!(parse_answer(&the_query(), 0x1234, &upper).unwrap().addresses.len(), 1);
    }

    #[test]
    fn compression_loops_end_in_errors() {
        // A pointer to itself, at offset 29.
        let bytes = answer_with(&[record(&[0xc0, 29], TYPE_A, 60, &[1, 1, 1, 1])]);
        assert_eq!(
            answer_error(&bytes),
            AnswerError::Format(FormatError::PointerNotBackward { at: 29, target: 29 })
        );
        // A pointer forward, to a pointer back to it.
        let mut bytes = answer_with(&[record(&[0xc0, 43], TYPE_A, 60, &[1, 1, 1, 1])]);
        bytes.extend_from_slice(&[0xc0, 29]);
        assert!(matches!(answer_error(&bytes), AnswerError::Format(FormatError::PointerNotBackward { .. })));
        // A label, then a pointer back to that label.
        let bytes = answer_with(&[record(&[1, b'a', 0xc0, 29], TYPE_A, 60, &[1, 1, 1, 1])]);
        assert!(matches!(answer_error(&bytes), AnswerError::Format(FormatError::PointerNotBackward { .. })));
    }

    /// An answer whose second record is owned by the end of a chain of `hops` pointers, each to the
    /// one before, the first to the question's name.
    fn pointer_chain(hops: usize) -> Vec<u8> {
        let mut chain = Vec::new();
        for index in 0..hops {
            let target = if index == 0 { 12 } else { 41 + 2 * (index - 1) };
            chain.extend_from_slice(&(0xc000 | u16::try_from(target).unwrap()).to_be_bytes());
        }
        let last = 41 + 2 * (hops - 1);
        let owner = (0xc000 | u16::try_from(last).unwrap()).to_be_bytes();
        answer_with(&[record(TO_QUESTION, 16, 60, &chain), record(&owner, TYPE_A, 60, &[5, 5, 5, 5])])
    }

    #[test]
    fn pointer_chains_are_bounded() {
        let answer = parse_answer(&the_query(), 0x1234, &pointer_chain(MAX_POINTERS - 1)).unwrap();
        assert_eq!(answer.addresses, [resolved("5.5.5.5", 60)]);
        assert_eq!(
            answer_error(&pointer_chain(MAX_POINTERS)),
            AnswerError::Format(FormatError::TooManyPointers)
        );
        assert_eq!(answer_error(&pointer_chain(8000)), AnswerError::Format(FormatError::TooManyPointers));
    }

    #[test]
    fn pointers_out_of_bounds_are_errors() {
        let bytes = answer_with(&[record(&[0xff, 0xff], TYPE_A, 60, &[1, 1, 1, 1])]);
        assert_eq!(
            answer_error(&bytes),
            AnswerError::Format(FormatError::PointerOutOfBounds { at: 29, target: 0x3fff })
        );
        let bytes = answer_with(&[record(TO_QUESTION, TYPE_CNAME, 60, &[0xc0])]);
        assert!(matches!(answer_error(&bytes), AnswerError::Format(FormatError::Truncated { .. })));
    }

    #[test]
    fn every_truncated_answer_is_an_error() {
        let full = answer_with(&[
            record(TO_QUESTION, TYPE_CNAME, 300, b"\x03www\x03cdn\x03net\x00"),
            record(&[0xc0, 41], TYPE_A, 60, &[1, 2, 3, 4]),
        ]);
        assert!(parse_answer(&the_query(), 0x1234, &full).is_ok());
        for len in 0..full.len() {
            assert!(parse_answer(&the_query(), 0x1234, &full[..len]).is_err(), "{len}");
        }
    }

    #[test]
    fn refuses_malformed_record_data() {
        let bytes = answer_with(&[record(TO_QUESTION, TYPE_A, 60, &[1, 2, 3, 4, 5])]);
        assert_eq!(
            answer_error(&bytes),
            AnswerError::Format(FormatError::BadRecordData { rtype: 1, len: 5 })
        );
        let bytes = answer_with(&[record(TO_QUESTION, TYPE_CNAME, 60, b"\x01a\x00\x00")]);
        assert_eq!(
            answer_error(&bytes),
            AnswerError::Format(FormatError::BadRecordData { rtype: 5, len: 4 })
        );
        let mut bytes = answer_with(&[record(TO_QUESTION, TYPE_A, 60, &[1, 2, 3, 4])]);
        bytes.push(0);
        assert_eq!(answer_error(&bytes), AnswerError::Format(FormatError::TrailingBytes { count: 1 }));
    }

    #[test]
    fn reads_rcode_truncation_and_extended_rcode() {
        let mut nxdomain = answer_with(&[]);
        nxdomain[3] = 0x83;
        assert_eq!(
            parse_answer(&the_query(), 0x1234, &nxdomain).unwrap(),
            Answer { rcode: 3, addresses: Vec::new(), truncated: false }
        );

        let mut truncated = answer_with(&[record(TO_QUESTION, TYPE_A, 60, &[1, 2, 3, 4])]);
        truncated[2] |= 0x02;
        truncated.truncate(35);
        assert_eq!(
            parse_answer(&the_query(), 0x1234, &truncated).unwrap(),
            Answer { rcode: 0, addresses: Vec::new(), truncated: true }
        );

        let mut extended = answer_with(&[]);
        extended[11] = 1;
        extended.extend_from_slice(&[0, 0, 41, 0x04, 0xd0, 1, 0, 0, 0, 0, 0]);
        assert_eq!(parse_answer(&the_query(), 0x1234, &extended).unwrap().rcode, 16);
        extended[11] = 2;
        extended.extend_from_slice(&[0, 0, 41, 0x04, 0xd0, 1, 0, 0, 0, 0, 0]);
        assert_eq!(answer_error(&extended), AnswerError::DuplicateOpt);
    }

    #[test]
    fn skips_authority_and_additional_records() {
        let mut bytes = answer_with(&[record(TO_QUESTION, TYPE_A, 60, &[1, 2, 3, 4])]);
        set_u16(&mut bytes, 8, 1);
        set_u16(&mut bytes, 10, 1);
        bytes.extend_from_slice(&record(&[0xc0, 20], 2, 60, b"\x02ns\xc0\x14"));
        bytes.extend_from_slice(&record(b"\x02ns\xc0\x14", TYPE_A, 60, &[6, 6, 6, 6]));
        assert_eq!(parse_answer(&the_query(), 0x1234, &bytes).unwrap().addresses, [resolved("1.2.3.4", 60)]);
    }

    #[test]
    fn rewrites_the_id() {
        let mut bytes = A_QUERY.to_vec();
        rewrite_id(&mut bytes, 0xabcd);
        assert_eq!(bytes[..2], [0xab, 0xcd]);
        assert_eq!(bytes[2..], A_QUERY[2..]);
        let mut short = [7];
        rewrite_id(&mut short, 1);
        assert_eq!(short, [7]);
    }

    /// A xorshift generator, seeded with a constant so failures repeat.
    struct Rng(u64);

    impl Rng {
        fn next(&mut self) -> u64 {
            self.0 ^= self.0 << 13;
            self.0 ^= self.0 >> 7;
            self.0 ^= self.0 << 17;
            self.0
        }

        fn below(&mut self, bound: usize) -> usize {
            usize::try_from(self.next() % u64::try_from(bound).unwrap()).unwrap()
        }

        fn byte(&mut self) -> u8 {
            self.next().to_le_bytes()[0]
        }
    }

    /// Feeds one message to every parser and checks what must hold; returns whether any transport
    /// accepted it as a query.
    fn check_any(bytes: &[u8]) -> bool {
        let mut accepted = false;
        for transport in [Transport::Udp, Transport::Tcp] {
            match parse_query(bytes, transport) {
                Ok(query) => {
                    accepted = true;
                    let again = parse_query(&query.to_bytes(query.id), transport).unwrap();
                    assert_eq!(again, query, "{bytes:02x?}");
                    let refused = response(&query, Rcode::Refused);
                    assert_eq!(parse_answer(&query, query.id, &refused).unwrap().rcode, 5);
                }
                Err(err) => {
                    if let Some(answer) = err.answer() {
                        assert!(answer.len() >= 12 && answer[2] & 0x80 != 0);
                        assert_eq!(answer[..2], bytes[..2]);
                    }
                }
            }
        }
        let _ = parse_answer(&the_query(), 0x1234, bytes);
        accepted
    }

    #[test]
    fn random_and_mutated_messages_never_panic() {
        let seeds = [
            A_QUERY.to_vec(),
            with_opt(&OPT_DO),
            answer_with(&[
                record(TO_QUESTION, TYPE_CNAME, 300, b"\x03www\x03cdn\x03net\x00"),
                record(&[0xc0, 41], TYPE_CNAME, 60, b"\x04edge\xc0\x2d"),
                record(&[0xc0, 66], TYPE_A, 3600, &[1, 2, 3, 4]),
            ]),
        ];
        let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
        let mut accepted = 0;
        for round in 0..100_000 {
            let bytes = if round % 2 == 0 {
                let len = rng.below(600);
                (0..len).map(|_| rng.byte()).collect()
            } else {
                let mut bytes = seeds[rng.below(seeds.len())].clone();
                for _ in 0..=rng.below(4) {
                    let at = rng.below(bytes.len() + 1);
                    match rng.below(5) {
                        0 => bytes.truncate(at),
                        1 => bytes.insert(at, rng.byte()),
                        2 if at < bytes.len() => bytes[at] ^= 1 << rng.below(8),
                        3 if at < bytes.len() => bytes[at] = 0xc0,
                        _ if at < bytes.len() => bytes[at] = rng.byte(),
                        _ => bytes.push(rng.byte()),
                    }
                }
                bytes
            };
            if check_any(&bytes) {
                accepted += 1;
            }
        }
        assert!(accepted > 1000, "only {accepted} mutants were accepted");
    }
}
