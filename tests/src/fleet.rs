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

/// A local target (`transport = "local"`) at 1 s with these checks (inline tables).
pub fn local_target_with(name: &str, checks: &[String]) -> String {
    target_with(name, "transport = \"local\"", checks)
}

/// An ssh target at `address` at 1 s with these checks (inline tables).
pub fn ssh_target_with(name: &str, address: &str, checks: &[String]) -> String {
    target_with(name, &format!("address = \"{address}\""), checks)
}

fn target_with(name: &str, how: &str, checks: &[String]) -> String {
    format!(
        "[[target]]\nname = \"{name}\"\n{how}\ninterval = \"1s\"\nchecks = [\n{}]\n\n",
        checks
            .iter()
            .map(|c| format!("  {c},\n"))
            .collect::<String>()
    )
}

/// A TOML basic string: quotes and backslashes escaped.
pub fn toml_str(s: &str) -> String {
    format!("\"{}\"", s.replace('\\', "\\\\").replace('"', "\\\""))
}
