//! Real servers for integration tests, started on free loopback ports and
//! stopped by pid, and a small app to send HTTP requests through.

#![allow(dead_code)] // Each test binary uses part of the support code.

pub mod eventually;
pub mod race;
pub mod redis_server;
pub mod ticket_app;
