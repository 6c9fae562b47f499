//! Ember VMM.
