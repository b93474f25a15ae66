//! The region coordinator and the `budgetctl` CLI.
