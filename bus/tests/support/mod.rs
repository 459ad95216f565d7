//! Helpers shared by the bus integration tests.

pub mod tansu;
