//! The Info section: how loopback scaling works and what every setting does, as the original
//! script's info panel explained it. The setting texts come from the settings definitions.

use loopback_core::settings::{FIELDS, Group};

/// Draws the Info section.
pub fn ui(ui: &mut egui::Ui) {
    ui.label(
        "Loopback Scaler runs img2img on the image again and again. Each loop works at a \
         larger size than the one before and adds detail at that size, so the image grows \
         towards the final size without the smearing of a plain upscale.",
    );
    ui.label(
        "Keep the denoising strength low (0.2–0.4) so each loop refines rather than repaints, \
         and write a prompt that describes the image: an empty prompt gives chaotic results.",
    );
    ui.label(
        "After the last loop the finishing chain (detail, smooth, blur, contour, then \
         sharpness, brightness, colour and contrast) runs exactly as Pillow would.",
    );
    for group in [
        Group::Img2img,
        Group::ControlNet,
        Group::Loop,
        Group::Size,
        Group::Finish,
    ] {
        ui.add_space(4.0);
        ui.strong(group.heading());
        for field in FIELDS.iter().filter(|f| f.group == group) {
            ui.horizontal_wrapped(|ui| {
                ui.label(egui::RichText::new(field.label).strong());
                ui.label(field.help.trim().replace('\n', " "));
            });
        }
    }
}
