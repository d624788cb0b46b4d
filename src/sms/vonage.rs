//! The vonage sender is being written; this placeholder keeps the feature compiling.
