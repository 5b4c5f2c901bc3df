//! The domain's rules as one test binary: the state machine and who may start a call.

mod initiate_rules;
mod state_machine;
