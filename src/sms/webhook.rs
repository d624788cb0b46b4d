//! The webhook sender is being written; this placeholder keeps the feature compiling.
