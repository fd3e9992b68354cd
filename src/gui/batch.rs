//! A batch: several images dropped on the window (or a folder) run one after another with the
//! model loaded once. Each result is saved as `<name>.png` in `loopback-output/` beside the
//! first image; an image whose result exists is skipped (dropping the same images again
//! resumes), an image that cannot be read or run is reported by name and the batch goes on,
//! and Cancel stops it. An image that carries settings (A1111, this app, ComfyUI, …) runs with
//! them, the others with the settings the batch started with. Each result appears in the
//! filmstrip under its name.

use std::path::PathBuf;

use super::app::App;
use super::state::{Batch, BatchItem, ItemStatus, Pending, Shown};

/// How a batch item's run ended.
pub enum RunEnd {
    /// The final image is in the session's outcome.
    Finished,
    /// It failed: why.
    Failed(String),
    /// The user cancelled: the batch stops.
    Cancelled,
}

impl App {
    /// Starts a batch over `paths` (folders give their images).
    pub(super) fn queue_batch(&mut self, paths: Vec<PathBuf>) {
        let mut inputs = Vec::new();
        for path in &paths {
            if path.is_dir() {
                match loopback_core::io::images_in(path) {
                    Ok(files) => inputs.extend(files),
                    Err(e) => self
                        .toasts
                        .error("Cannot read the folder", Some(e.to_string())),
                }
            } else {
                inputs.push(path.clone());
            }
        }
        let Some(first) = inputs.first() else {
            self.toasts
                .error("No PNG, JPEG or WebP images to run", None);
            return;
        };
        let base_dir = match paths.first() {
            Some(p) if p.is_dir() => p.clone(),
            _ => first.parent().map(PathBuf::from).unwrap_or_default(),
        };
        let out_dir = base_dir.join("loopback-output");
        if let Err(e) = std::fs::create_dir_all(&out_dir) {
            self.toasts.error(
                "Cannot create the output folder",
                Some(format!("{}: {e}", out_dir.display())),
            );
            return;
        }
        self.toasts.info(format!(
            "Batch of {} image(s); results go to {}",
            inputs.len(),
            out_dir.display()
        ));
        self.session.batch_results.clear();
        self.session.batch = Some(Batch {
            items: inputs
                .into_iter()
                .map(|input| BatchItem {
                    input,
                    status: ItemStatus::Pending,
                })
                .collect(),
            out_dir,
            current: None,
            base: self.persisted.settings.clone(),
        });
        self.batch_next();
    }

    /// Where item `input`'s result goes.
    fn batch_output(batch: &Batch, input: &std::path::Path) -> PathBuf {
        let stem = input.file_stem().unwrap_or_default().to_string_lossy();
        batch.out_dir.join(format!("{stem}.png"))
    }

    /// Opens the next pending item, skipping those whose result exists; reports the batch
    /// when none is left.
    pub(super) fn batch_next(&mut self) {
        let Some(batch) = &mut self.session.batch else {
            return;
        };
        batch.current = None;
        for (i, item) in batch.items.iter_mut().enumerate() {
            if item.status != ItemStatus::Pending {
                continue;
            }
            if Self::batch_output_exists(&batch.out_dir, &item.input) {
                item.status = ItemStatus::Skipped;
                continue;
            }
            item.status = ItemStatus::Loading;
            batch.current = Some(i);
            let input = item.input.clone();
            self.persisted.settings = batch.base.clone();
            self.session.loading_image = true;
            self.jobs.open(input);
            return;
        }
        self.batch_report();
    }

    fn batch_output_exists(out_dir: &std::path::Path, input: &std::path::Path) -> bool {
        let stem = input.file_stem().unwrap_or_default().to_string_lossy();
        out_dir.join(format!("{stem}.png")).exists()
    }

    /// The current item was read: take its settings, if it carries any, and run it.
    pub(super) fn batch_image_loaded(&mut self) {
        let Some(i) = self.batch_current(ItemStatus::Loading) else {
            return;
        };
        if let Some(index) = self
            .session
            .pending
            .iter()
            .position(|p| matches!(p, Pending::Metadata { .. }))
            && let Pending::Metadata { settings, .. } = self.session.pending.remove(index)
        {
            self.persisted.settings = *settings;
        }
        self.set_status(i, ItemStatus::Running);
        self.start_run(Shown::Original);
        let started = self.session.running() || self.session.model.run_when_loaded.is_some();
        if !started {
            self.set_status(i, ItemStatus::Failed("the run could not start".into()));
            self.batch_next();
        }
    }

    /// The current item could not be read.
    pub(super) fn batch_image_failed(&mut self, message: &str) {
        if let Some(i) = self.batch_current(ItemStatus::Loading) {
            self.set_status(i, ItemStatus::Failed(message.to_string()));
            self.batch_next();
        }
    }

    /// The current item's run ended: save its result, or record why not, and go on.
    pub(super) fn batch_run_ended(&mut self, end: RunEnd) {
        let Some(i) = self.batch_current(ItemStatus::Running) else {
            return;
        };
        match end {
            RunEnd::Finished => {
                let Some(batch) = &self.session.batch else {
                    return;
                };
                let output = Self::batch_output(batch, &batch.items[i].input);
                self.save(vec![(Shown::Final, output.clone())], false);
                if let Some(outcome) = &self.session.outcome {
                    let name = output
                        .file_stem()
                        .unwrap_or_default()
                        .to_string_lossy()
                        .into_owned();
                    let texture = outcome.finished.texture.clone();
                    self.session
                        .batch_results
                        .push((name, output.clone(), texture));
                }
                self.set_status(i, ItemStatus::Done(output));
                self.batch_next();
            }
            RunEnd::Failed(message) => {
                self.set_status(i, ItemStatus::Failed(message));
                self.batch_next();
            }
            RunEnd::Cancelled => {
                self.set_status(i, ItemStatus::Failed("cancelled".into()));
                self.batch_report();
            }
        }
    }

    /// The index of the current item when it has `status`.
    fn batch_current(&self, status: ItemStatus) -> Option<usize> {
        let batch = self.session.batch.as_ref()?;
        let i = batch.current?;
        (batch.items[i].status == status).then_some(i)
    }

    fn set_status(&mut self, i: usize, status: ItemStatus) {
        if let Some(item) = self.session.batch.as_mut().and_then(|b| b.items.get_mut(i)) {
            item.status = status;
        }
    }

    /// Ends the batch with a summary: one toast, and one error per failed image.
    fn batch_report(&mut self) {
        let Some(batch) = self.session.batch.take() else {
            return;
        };
        let count =
            |f: fn(&ItemStatus) -> bool| batch.items.iter().filter(|i| f(&i.status)).count();
        let done = count(|s| matches!(s, ItemStatus::Done(_)));
        let skipped = count(|s| *s == ItemStatus::Skipped);
        for item in &batch.items {
            if let ItemStatus::Failed(why) = &item.status {
                self.toasts.error(
                    format!("Batch: {} failed", item.input.display()),
                    Some(why.clone()),
                );
            }
        }
        self.toasts.info(format!(
            "Batch finished: {done} done, {skipped} skipped (already done), {} failed; results in {}",
            batch.items.len() - done - skipped,
            batch.out_dir.display()
        ));
    }
}
