//! Causeway federator.
