use std::path::PathBuf;
use std::time::Instant;

use smolvm_engine::image::{BuildOptions, ImageStore};
use smolvm_engine::paths::Paths;

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let store = ImageStore::new(&Paths::new(&args[1]));
    let opts = BuildOptions { agent_binary: PathBuf::from(&args[2]), force: args.get(3).is_some_and(|a| a == "force") };
    let started = Instant::now();
    match store.build_default(&opts, &mut |p| println!("{p} (+{:.1}s)", started.elapsed().as_secs_f64())) {
        Ok(image) => println!("{image:#?}"),
        Err(err) => {
            let mut e: &dyn std::error::Error = &err;
            eprintln!("error: {e}");
            while let Some(s) = e.source() { eprintln!("  caused by: {s}"); e = s; }
            std::process::exit(1);
        }
    }
    println!("elapsed {:.1}s", started.elapsed().as_secs_f64());
    println!("{:#?}", store.list().unwrap());
    println!("{:#?}", store.resolve(args.get(4).map(String::as_str)));
}
