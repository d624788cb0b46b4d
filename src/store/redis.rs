//! The redis store is being written; this placeholder keeps the feature compiling.
