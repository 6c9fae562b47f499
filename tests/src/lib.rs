//! E2E helpers.
