//! Real servers for integration tests, started on free loopback ports and
//! stopped by pid.

#![allow(dead_code)] // Each test binary uses part of the support code.

pub mod redis_server;
