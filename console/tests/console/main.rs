//! The console's integration tests: real SQLite files, a real PostgreSQL cluster started
//! for each test (as the postgres user: run as root), real gRPC streams on loopback.

mod anchors;
mod announce;
mod api;
mod chat_links;
mod evidence;
mod export;
mod hostile;
mod policies;
mod siem;
mod streams;
mod support;
mod teams_token;
mod tls;
mod webhooks;
