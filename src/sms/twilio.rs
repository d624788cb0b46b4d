//! The twilio sender is being written; this placeholder keeps the feature compiling.
