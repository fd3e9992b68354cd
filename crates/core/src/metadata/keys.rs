//! The PNG text keys of a saved result's metadata.

/// The PNG text key of A1111's infotext.
pub const PARAMETERS_KEY: &str = "parameters";
/// The PNG text key of the app's recipe (JSON).
pub const RECIPE_KEY: &str = "loopback-scaler";
/// The PNG text key recording a `post` re-finish (JSON).
pub const POST_KEY: &str = "loopback-scaler-post";
