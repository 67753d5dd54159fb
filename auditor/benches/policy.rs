//! Placeholder: the policy benchmark lands in a following commit.
fn main() {}
