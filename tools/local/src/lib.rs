//! The local stack of DESIGN §10: the same handlers as Lambda, on moto and the Graph emulator.

pub mod gateway;
pub mod pollers;
pub mod provision;
pub mod stack;
pub mod template;
pub mod token;
