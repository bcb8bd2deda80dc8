//! Causeway east-west gateway. Not yet implemented: see the "East-west gateway" issue.
