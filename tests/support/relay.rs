//! placeholder
pub struct FaultRelay;
pub enum RelayMode {}
