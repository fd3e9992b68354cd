//! Saving: the default file names (`<input>-<seed>[-loopK].png`), the Save… dialog, the
//! overwrite question, and the PNG texts written with a run's images.

use std::path::{Path, PathBuf};

use super::app::App;
use super::state::{Pending, Shown};

impl App {
    /// The default file name for `shown`: the input's name, the seed, and the loop.
    pub(super) fn default_name(&self, shown: Shown) -> String {
        let stem = self
            .session
            .input
            .as_ref()
            .map_or("image", |i| i.stem.as_str());
        let seed = self
            .session
            .run_seed
            .map(|s| format!("-{s}"))
            .unwrap_or_default();
        match shown {
            Shown::Loop(k) => format!("{stem}{seed}-loop{k}.png"),
            Shown::Final => format!("{stem}{seed}.png"),
            Shown::Original | Shown::Preview => format!("{stem}.png"),
        }
    }

    /// Where Save all loops… writes into `dir`: every loop, and the final image when there
    /// is one.
    pub(super) fn save_all_paths(&self, dir: &Path) -> Vec<(Shown, PathBuf)> {
        let mut what: Vec<(Shown, PathBuf)> = (1..=self.session.loops.len())
            .map(|k| (Shown::Loop(k), dir.join(self.default_name(Shown::Loop(k)))))
            .collect();
        if self.session.outcome.is_some() {
            what.push((Shown::Final, dir.join(self.default_name(Shown::Final))));
        }
        what
    }

    /// Shows the Save… dialog for `shown`.
    pub(super) fn save_dialog(&mut self, shown: Shown) {
        if self.session.image(shown).is_none() {
            self.toasts
                .error("Nothing to save yet: run the loops first", None);
            return;
        }
        if self.session.dialog_open {
            return;
        }
        let mut dialog = rfd::AsyncFileDialog::new()
            .set_title("Save the image")
            .add_filter("PNG", &["png"])
            .set_file_name(self.default_name(shown));
        if let Some(dir) = self
            .session
            .input
            .as_ref()
            .and_then(|i| i.path.as_deref())
            .and_then(Path::parent)
        {
            dialog = dialog.set_directory(dir);
        }
        self.session.dialog_open = true;
        self.jobs.save_dialog(dialog.save_file(), shown);
    }

    /// Writes `what`, asking first when a file exists and `overwrite` is not set.
    pub(super) fn save(&mut self, what: Vec<(Shown, PathBuf)>, overwrite: bool) {
        if !overwrite && what.iter().any(|(_, path)| path.exists()) {
            self.session.pending.push(Pending::Overwrite { what });
            return;
        }
        let texts = self.recipe_texts();
        let mut items = Vec::new();
        for (shown, path) in what {
            let Some(image) = self.session.image(shown) else {
                continue;
            };
            let texts = if matches!(shown, Shown::Final | Shown::Loop(_)) {
                texts.clone()
            } else {
                Vec::new()
            };
            items.push((image, path, texts));
        }
        if items.is_empty() {
            self.toasts
                .error("Nothing to save yet: run the loops first", None);
            return;
        }
        self.session.saving = true;
        self.jobs.save(items, overwrite);
    }

    /// The PNG texts of the last run, with the finishing as currently applied.
    fn recipe_texts(&self) -> Vec<(String, String)> {
        let Some(outcome) = &self.session.outcome else {
            return Vec::new();
        };
        let mut recipe = outcome.recipe.clone();
        recipe.settings.set_finishing(&outcome.applied);
        recipe.png_texts()
    }
}

/// Adds `.png` when the chosen name has no extension.
pub(super) fn with_png_extension(path: PathBuf) -> PathBuf {
    if path.extension().is_some() {
        path
    } else {
        path.with_extension("png")
    }
}
