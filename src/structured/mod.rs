//! Structured output: JSON Schema helpers for responses that must follow a schema.

pub mod sample;
