//! Notifications: a durable outbox drained by a worker through channels.
pub mod channels;
pub mod worker;
