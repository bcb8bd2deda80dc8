//! Causeway mesh DNS (`clusterset.local`). Not yet implemented: see the "Mesh DNS" issue.
