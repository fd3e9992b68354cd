//! The Prompt section: the prompt and the negative prompt, each with A1111's token counter
//! (`12/75`) and a menu that inserts an embedding's name, and the settings' warnings.

use loopback_engine::load::library::Kind;

use super::fields;
use crate::gui::state::{Persisted, Session};

/// Draws the section.
pub fn ui(ui: &mut egui::Ui, persisted: &mut Persisted, session: &Session) {
    let steps = persisted.settings.steps as usize;
    let embeddings: Vec<&str> = session
        .library
        .iter()
        .filter(|e| e.kind == Kind::Embedding)
        .map(|e| e.name.as_str())
        .collect();
    for (key, label) in [("prompt", "prompt"), ("negative_prompt", "negative prompt")] {
        fields::keys_ui(ui, &mut persisted.settings, &[key]);
        let text = match key {
            "prompt" => &mut persisted.settings.prompt,
            _ => &mut persisted.settings.negative_prompt,
        };
        ui.horizontal(|ui| {
            ui.label(egui::RichText::new(session.token_counter.get(text, steps)).small())
                .on_hover_text(
                    "Tokens / what the text encoder reads, as A1111 counts them: each 75-token \
                     chunk is encoded on its own",
                );
            ui.add_enabled_ui(!embeddings.is_empty(), |ui| {
                ui.menu_button("Embedding…", |ui| {
                    for name in &embeddings {
                        if ui.button(*name).clicked() {
                            insert_name(text, name);
                            ui.close();
                        }
                    }
                })
                .response
                .on_hover_text(format!(
                    "Insert a textual-inversion embedding into the {label} (from \
                     models/embeddings and embeddings/)"
                ))
                .on_disabled_hover_text("No embeddings in models/embeddings or embeddings/");
            });
        });
    }
    for warning in persisted.settings.warnings() {
        ui.colored_label(ui.visuals().warn_fg_color, format!("Warning: {warning}"));
    }
}

/// Appends `name` to a prompt, after a comma when the prompt has text.
fn insert_name(prompt: &mut String, name: &str) {
    let trimmed = prompt.trim_end();
    *prompt = if trimmed.is_empty() {
        name.to_string()
    } else if trimmed.ends_with(',') {
        format!("{trimmed} {name}")
    } else {
        format!("{trimmed}, {name}")
    };
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_appended_after_a_comma() {
        let mut p = String::from("a cat");
        insert_name(&mut p, "lbstyle");
        assert_eq!(p, "a cat, lbstyle");
        let mut p = String::new();
        insert_name(&mut p, "x");
        assert_eq!(p, "x");
    }
}
