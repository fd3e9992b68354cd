//! The loop plan.
