//! Rules: pure evaluation of samples and events into alert transitions.
pub mod action;
pub mod engine;
pub mod machine;
pub mod runner;
pub mod select;
pub mod template;
