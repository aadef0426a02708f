//! End-to-end tests for lunavm live in `tests/tests/`.
