//! fleet.toml snippets; concatenate them for a fleet of several targets.

/// A `[[target]]` reached over SSH at `address` (`host:port`) with the vitals check.
pub fn ssh_target(name: &str, address: &str, interval: &str) -> String {
    format!(
        "[[target]]\nname = \"{name}\"\naddress = \"{address}\"\ninterval = \"{interval}\"\n\
         checks = [{{ kind = \"vitals\" }}]\n\n"
    )
}

/// A `[[target]]` on the node's own host (`transport = "local"`) with the vitals check.
pub fn local_target(name: &str, interval: &str) -> String {
    format!(
        "[[target]]\nname = \"{name}\"\ntransport = \"local\"\ninterval = \"{interval}\"\n\
         checks = [{{ kind = \"vitals\" }}]\n\n"
    )
}
