//! Rules: pure evaluation of samples and events into alert transitions.
pub mod engine;
pub mod template;
