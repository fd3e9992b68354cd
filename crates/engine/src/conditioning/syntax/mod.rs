//! A1111's prompt language, read exactly as A1111 reads it:
//! - [`schedule`]: prompt editing (`[from:to:when]`) and alternation (`[a|b]`), i.e. which text
//!   is in force at each sampling step;
//! - [`attention`]: emphasis (`(word)`, `[word]`, `(word:1.3)`, escapes) and `BREAK`, i.e. the
//!   weight of every piece of one of those texts.
//!
//! Both are checked against what A1111 returns for 120 prompts (`tests/fixtures/prompts/`).

pub mod attention;
pub mod schedule;

pub use attention::{BREAK, BREAK_WEIGHT, Weighted, parse_attention};
pub use schedule::{Schedule, schedule, text_at};
