//! Asking the host's resolvers: over UDP for a query that came over UDP (a truncated
//! answer is passed on, and the agent asks again over TCP), over TCP for one over TCP.

use std::{net::SocketAddr, time::Duration};

use tokio::{
    io::{AsyncReadExt as _, AsyncWriteExt as _},
    net::{TcpStream, UdpSocket},
};

use super::wire::{self, Answer, Query, Transport};

/// How long one upstream may take before the next is asked.
const UPSTREAM_TIMEOUT: Duration = Duration::from_secs(2);

/// The nameservers of `/etc/resolv.conf`, port 53.
pub fn from_resolv_conf() -> Vec<SocketAddr> {
    std::fs::read_to_string("/etc/resolv.conf")
        .unwrap_or_default()
        .lines()
        .filter_map(|line| line.trim().strip_prefix("nameserver"))
        .filter_map(|rest| rest.trim().split('%').next()?.parse().ok())
        .map(|ip| SocketAddr::new(ip, 53))
        .collect()
}

/// The first answer to `query` from `upstreams`, tried in order: its bytes as sent (under
/// the id keyturn chose) and what keyturn read in it.
pub async fn ask(upstreams: &[SocketAddr], query: &Query, transport: Transport) -> Option<(Vec<u8>, Answer)> {
    for &upstream in upstreams {
        let id = random_id();
        let message = query.to_bytes(id);
        let asked = match transport {
            Transport::Udp => {
                tokio::time::timeout(UPSTREAM_TIMEOUT, over_udp(upstream, &message, query, id)).await
            }
            Transport::Tcp => {
                tokio::time::timeout(UPSTREAM_TIMEOUT, over_tcp(upstream, &message, query, id)).await
            }
        };
        match asked {
            Ok(Ok(answered)) => return Some(answered),
            Ok(Err(e)) => tracing::warn!(%upstream, error = %e, "DNS: upstream failed"),
            Err(_) => tracing::warn!(%upstream, "DNS: upstream did not answer in time"),
        }
    }
    None
}

fn random_id() -> u16 {
    let mut id = [0u8; 2];
    // Without randomness the id is 0: the connected socket's random port still guards it.
    let _ = getrandom::fill(&mut id);
    u16::from_ne_bytes(id)
}

async fn over_udp(
    upstream: SocketAddr,
    message: &[u8],
    query: &Query,
    id: u16,
) -> std::io::Result<(Vec<u8>, Answer)> {
    let local: SocketAddr = if upstream.is_ipv4() { ([0, 0, 0, 0], 0).into() } else { ([0u16; 8], 0).into() };
    let socket = UdpSocket::bind(local).await?;
    socket.connect(upstream).await?;
    socket.send(message).await?;
    let mut buffer = vec![0u8; usize::from(u16::MAX)];
    loop {
        let len = socket.recv(&mut buffer).await?;
        // Anything else arriving on this port (a late answer to an earlier id) is ignored.
        if let Ok(answer) = wire::parse_answer(query, id, &buffer[..len]) {
            return Ok((buffer[..len].to_vec(), answer));
        }
    }
}

async fn over_tcp(
    upstream: SocketAddr,
    message: &[u8],
    query: &Query,
    id: u16,
) -> std::io::Result<(Vec<u8>, Answer)> {
    let mut stream = TcpStream::connect(upstream).await?;
    let len = u16::try_from(message.len()).map_err(std::io::Error::other)?;
    stream.write_all(&[&len.to_be_bytes()[..], message].concat()).await?;
    let mut reply = vec![0u8; usize::from(stream.read_u16().await?)];
    stream.read_exact(&mut reply).await?;
    let answer = wire::parse_answer(query, id, &reply).map_err(std::io::Error::other)?;
    Ok((reply, answer))
}
