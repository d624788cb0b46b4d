//! The sqlite store is being written; this placeholder keeps the feature compiling.
