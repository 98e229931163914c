#![allow(clippy::unwrap_used, clippy::expect_used)]
//! The cutover.toml examples of the router pages load as they are, so a reader who copies one
//! gets a configuration cutover accepts.

use cutover_server::Config;

fn toml_blocks(doc: &str) -> Vec<String> {
    let mut blocks = Vec::new();
    let mut current: Option<String> = None;
    for line in doc.lines() {
        match (&mut current, line.trim_start()) {
            (None, l) if l.starts_with("```toml") => current = Some(String::new()),
            (Some(_), l) if l.starts_with("```") => blocks.push(current.take().unwrap()),
            (Some(text), _) => {
                text.push_str(line);
                text.push('\n');
            }
            (None, _) => {}
        }
    }
    blocks
}

#[test]
fn the_router_pages_show_configurations_cutover_accepts() {
    for (page, kind) in [("haproxy", "haproxy"), ("nginx", "nginx")] {
        let path = format!("{}/../../docs/routers/{page}.md", env!("CARGO_MANIFEST_DIR"));
        let doc = std::fs::read_to_string(&path).unwrap();
        let block = toml_blocks(&doc)
            .into_iter()
            .find(|b| b.contains("[app.router]"))
            .unwrap_or_else(|| panic!("{path} has no cutover.toml example"));
        let config = Config::parse(&block, &path).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(config.apps[0].router.kind(), kind, "{path}");
    }
}
