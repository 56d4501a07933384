//! Rendering a [`crate::Study`]: the terminal table ([`text`]) and the self-contained HTML
//! page with its SVG figure ([`html`]). JSON is [`crate::Study::to_json`].

pub mod html;
pub mod text;
