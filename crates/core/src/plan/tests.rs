use super::*;
use crate::settings::TargetMode;

fn settings(f: impl FnOnce(&mut Settings)) -> Settings {
    let mut s = Settings::default();
    f(&mut s);
    s
}

fn sizes(plan: &Plan) -> Vec<(u32, u32)> {
    plan.loops.iter().map(|l| (l.width, l.height)).collect()
}

#[test]
fn linear_square() {
    let p = plan(&Settings::default(), Size::new(512, 512), 7, &[]).unwrap();
    assert_eq!(p.final_size, Size::new(1024, 1024));
    assert_eq!(
        sizes(&p),
        [(640, 640), (768, 768), (896, 896), (1024, 1024)]
    );
    assert_eq!(
        p.loops.iter().map(|l| l.seed).collect::<Vec<_>>(),
        [7, 8, 9, 10]
    );
    assert_eq!(p.loops[0].steps, 10);
}

#[test]
fn portrait_max_size_rounds_down_and_follows_the_ratio() {
    let s = settings(|s| s.denoise_change = 0.9);
    let p = plan(&s, Size::new(512, 768), 100, &[]).unwrap();
    // Hf = 1024, Wf = floor(1024·512/768) = 682 → 680.
    assert_eq!(p.final_size, Size::new(680, 1024));
    assert_eq!(sizes(&p), [(552, 832), (600, 896), (640, 960), (680, 1024)]);
    let denoise: Vec<f64> = p.loops.iter().map(|l| l.denoise).collect();
    assert_eq!(
        denoise,
        [0.35, 0.35 * 0.9, 0.35 * 0.9 * 0.9, 0.35 * 0.9 * 0.9 * 0.9]
    );
    assert_eq!(
        p.loops.iter().map(|l| l.steps).collect::<Vec<_>>(),
        [10, 9, 8, 7]
    );
}

#[test]
fn width_limited_when_wider_than_the_box() {
    let s = settings(|s| {
        s.max_width = 1536;
        s.max_height = 1024;
        s.loops = 2;
    });
    let p = plan(&s, Size::new(768, 512), 0, &[]).unwrap();
    assert_eq!(p.final_size, Size::new(1536, 1024));
    let s = settings(|s| s.max_height = 2048);
    let p = plan(&s, Size::new(600, 400), 0, &[]).unwrap();
    // r = 0.667 < 2048/1024: width limits; Hf = floor(1024·400/600) = 682 → 680.
    assert_eq!(p.final_size, Size::new(1024, 680));
}

#[test]
fn scale_mode() {
    let s = settings(|s| {
        s.target_mode = TargetMode::Scale;
        s.scale = 1.5;
        s.loops = 3;
    });
    let p = plan(&s, Size::new(512, 768), 0, &[]).unwrap();
    assert_eq!(p.final_size, Size::new(768, 1152));
    assert_eq!(sizes(&p), [(600, 896), (680, 1024), (768, 1152)]);
}

#[test]
fn scale_beyond_the_largest_side_is_refused() {
    let s = settings(|s| {
        s.target_mode = TargetMode::Scale;
        s.scale = 4.0;
    });
    let err = plan(&s, Size::new(2048, 2048), 0, &[])
        .unwrap_err()
        .to_string();
    assert!(err.contains("8192x8192"), "{err}");
}

#[test]
fn adaptive_uses_each_loops_mean() {
    let s = settings(|s| s.curve = Curve::Adaptive);
    // b = floor((1024 − 512)/4) = 128; with mean 127.5 every step adds trunc(64) = 64.
    let p = plan(&s, Size::new(512, 512), 0, &[127.5]).unwrap();
    assert_eq!(
        sizes(&p),
        [(576, 576), (640, 640), (704, 704), (1024, 1024)]
    );
    assert!(!p.loops[0].estimated && p.loops[1].estimated && p.loops[2].estimated);
    assert!(!p.loops[3].estimated);
    // Known means: dark, then bright.
    let p = plan(&s, Size::new(512, 512), 0, &[25.5, 255.0, 255.0]).unwrap();
    // +trunc(12.8) = 12 → 524 → 528; +128 → 652 → 656; +128 → 780 → 784.
    assert_eq!(
        sizes(&p),
        [(528, 528), (656, 656), (784, 784), (1024, 1024)]
    );
    assert!(p.loops.iter().all(|l| !l.estimated));
    let s = settings(|s| {
        s.curve = Curve::Adaptive;
        s.adaptive_factor = 2.0;
    });
    let p = plan(&s, Size::new(512, 512), 0, &[127.5]).unwrap();
    assert_eq!(sizes(&p)[0], (640, 640));
}

#[test]
fn eased_curves_hit_the_ends() {
    for &curve in <Curve as crate::settings::Choice>::ALL {
        let e0 = ease(curve, 0.0);
        let e1 = ease(curve, 1.0);
        assert!(
            e0.abs() < 1e-12 && (e1 - 1.0).abs() < 1e-12,
            "{curve}: {e0} {e1}"
        );
    }
    assert!((ease(Curve::EaseInQuint, 0.5) - 0.03125).abs() < 1e-15);
    assert!((ease(Curve::EaseInOutCirc, 0.25) - (1.0 - 0.75f64.sqrt()) / 2.0).abs() < 1e-15);
}

#[test]
fn ease_in_cubic_sizes() {
    let s = settings(|s| s.curve = Curve::EaseInCubic);
    let p = plan(&s, Size::new(512, 512), 0, &[]).unwrap();
    // 512 + 512·p³: 520, 576, 728, 1024.
    assert_eq!(
        sizes(&p),
        [(520, 520), (576, 576), (728, 728), (1024, 1024)]
    );
}

#[test]
fn seeds_wrap_and_denoise_clamps() {
    let s = settings(|s| {
        s.denoise = 0.05;
        s.denoise_change = 1.1;
        s.loops = 3;
    });
    let p = plan(&s, Size::new(512, 512), u32::MAX, &[]).unwrap();
    assert_eq!(
        p.loops.iter().map(|l| l.seed).collect::<Vec<_>>(),
        [u32::MAX, 0, 1]
    );
    assert_eq!(p.loops[0].denoise, 0.05);
    assert_eq!(p.loops[1].denoise, 0.1);
    assert_eq!(p.loops[0].steps, 1);
    assert_eq!(steps_for(30, 0.0), 0);
    assert_eq!(steps_for(30, 1.0), 30);
}

#[test]
fn shrinking_runs_from_start_to_final() {
    let p = plan(&Settings::default(), Size::new(2048, 2048), 0, &[]).unwrap();
    assert_eq!(
        sizes(&p),
        [(1792, 1792), (1536, 1536), (1280, 1280), (1024, 1024)]
    );
    assert_eq!(p.notes().len(), 1);
}

#[test]
fn start_size_from_image_or_setting() {
    let s = Settings::default();
    assert_eq!(
        start_size(&s, Some(Size::new(451, 300))).unwrap(),
        Size::new(448, 296)
    );
    let err = start_size(&s, Some(Size::new(40, 300)))
        .unwrap_err()
        .to_string();
    assert!(err.contains("between 64 and 4096"), "{err}");
    let s = settings(|s| s.start_size = Some(Size::new(512, 768)));
    assert_eq!(
        start_size(&s, Some(Size::new(451, 300))).unwrap(),
        Size::new(512, 768)
    );
    assert!(start_size(&Settings::default(), None).is_err());
}

#[test]
fn json_is_exactly_the_documented_shape() {
    let s = settings(|s| s.loops = 2);
    let p = plan(&s, Size::new(512, 512), 5, &[]).unwrap();
    assert_eq!(
        p.to_json(),
        r#"{"final":{"width":1024,"height":1024},"loops":[{"index":1,"width":768,"height":768,"denoise":0.35,"seed":5,"steps":10},{"index":2,"width":1024,"height":1024,"denoise":0.35,"seed":6,"steps":10}]}"#
    );
}

#[test]
fn resolve_seed_keeps_fixed_and_draws_random() {
    assert_eq!(resolve_seed(42), 42);
    assert_eq!(resolve_seed(i64::from(u32::MAX)), u32::MAX);
    let a = resolve_seed(-1);
    assert!(a < u32::MAX - 1);
}

#[test]
fn mean_of_rgb() {
    let img = image::RgbImage::from_fn(2, 1, |x, _| {
        image::Rgb(if x == 0 { [0, 0, 0] } else { [255, 255, 255] })
    });
    assert_eq!(rgb_mean(&img), 127.5);
}

#[test]
fn plan_for_an_input_starts_from_its_size_and_brightness() {
    let adaptive = settings(|s| s.curve = Curve::Adaptive);
    let input = PlanInput::Image {
        size: Size::new(517, 771),
        mean: 60.0,
    };
    let p = plan_for(&adaptive, input, 5).unwrap();
    let start = Size::new(512, 768);
    assert_eq!(p.start, start);
    assert_eq!(p, plan(&adaptive, start, 5, &[60.0]).unwrap());
    assert!(!p.loops[0].estimated && p.loops[1].estimated);

    // An image as the run sees it: alpha flattened onto white.
    let rgba = image::RgbaImage::from_pixel(64, 72, image::Rgba([0, 0, 0, 0]));
    let of_image = PlanInput::of_image(&DynamicImage::ImageRgba8(rgba));
    assert_eq!(
        of_image,
        PlanInput::Image {
            size: Size::new(64, 72),
            mean: 255.0
        }
    );
    assert_eq!(
        (of_image.size(), of_image.mean()),
        (Some(Size::new(64, 72)), Some(255.0))
    );
}

#[test]
fn plan_for_no_input_needs_the_start_size_setting() {
    assert!(plan_for(&Settings::default(), PlanInput::NoImage, 1).is_err());
    let s = settings(|s| {
        s.start_size = Some(Size::new(512, 512));
        s.curve = Curve::Adaptive;
    });
    let p = plan_for(&s, PlanInput::NoImage, 1).unwrap();
    assert_eq!(p, plan(&s, Size::new(512, 512), 1, &[]).unwrap());
    // The start size setting wins over an image's size.
    let image = PlanInput::Image {
        size: Size::new(800, 600),
        mean: 127.5,
    };
    assert_eq!(plan_for(&s, image, 1).unwrap().start, Size::new(512, 512));
}
