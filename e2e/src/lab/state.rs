//! `<state-dir>/lab.json`, typed once in causeway-probe (`causeway drill --lab` reads it too).

pub use causeway_probe::lab::*;
