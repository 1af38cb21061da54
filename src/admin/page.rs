//! The admin endpoint's status page (`/`): server-rendered from a status snapshot.

use crate::control::NodeStatus;

/// Escapes text for HTML.
fn esc(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

/// The page for `st`.
pub(super) fn render(st: &NodeStatus) -> String {
    let mut rows = String::new();
    for c in &st.connect {
        for i in &c.instances {
            rows.push_str(&format!(
                "<tr><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
                esc(&c.service),
                esc(i.node.as_deref().unwrap_or("-")),
                esc(&i.health),
                i.open,
                i.total,
                i.bytes_sent,
                i.bytes_received
            ));
        }
    }
    format!(
        "<!doctype html><html><head><meta charset=utf-8><meta http-equiv=refresh content=5><title>ambassador {}</title></head><body><h1>{}</h1><table>{rows}</table></body></html>",
        esc(&st.node),
        esc(&st.node)
    )
}
