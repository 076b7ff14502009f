//! The asset registry: every file the site needs besides its pages, embedded in the binary,
//! written under `assets/` with a content hash in its name (so a browser never mixes versions),
//! licences alongside.

use sha2::{Digest, Sha256};
use std::path::Path;
use std::sync::OnceLock;

/// One embedded file.
pub struct Asset {
    /// Logical name, e.g. `plotly-basic.min.js`; the hash goes before the last extension.
    pub name: &'static str,
    pub bytes: &'static [u8],
    /// A licence file shipped next to it, written under its own (unhashed) name.
    pub license: Option<(&'static str, &'static [u8])>,
    hashed: OnceLock<String>,
}

impl Asset {
    const fn new(
        name: &'static str,
        bytes: &'static [u8],
        license: Option<(&'static str, &'static [u8])>,
    ) -> Self {
        Asset {
            name,
            bytes,
            license,
            hashed: OnceLock::new(),
        }
    }

    /// `name.<hash>.ext`, the first 10 hex digits of the SHA-256 of the bytes.
    pub fn file_name(&self) -> &str {
        self.hashed.get_or_init(|| {
            let digest = Sha256::digest(self.bytes);
            let hash: String = digest.iter().take(5).map(|b| format!("{b:02x}")).collect();
            match self.name.rsplit_once('.') {
                Some((stem, ext)) => format!("{stem}.{hash}.{ext}"),
                None => format!("{}.{hash}", self.name),
            }
        })
    }

    /// Relative URL from a page at the site root.
    pub fn href(&self) -> String {
        format!("assets/{}", self.file_name())
    }
}

/// plotly.js, basic bundle (scatter, bar, pie): MIT, vendored from npm `plotly.js-basic-dist-min`.
pub static PLOTLY: Asset = Asset::new(
    "plotly-basic.min.js",
    include_bytes!("../assets/plotly-basic.min.js"),
    Some((
        "plotly-basic.min.js.LICENSE",
        include_bytes!("../assets/plotly-basic.min.js.LICENSE"),
    )),
);

/// The site's stylesheet.
pub static CSS: Asset = Asset::new("site.css", include_bytes!("../assets/site.css"), None);

/// Draws the charts of a page from its inline specs.
pub static CHARTS_JS: Asset = Asset::new("site.js", include_bytes!("../assets/site.js"), None);

pub fn all() -> [&'static Asset; 3] {
    [&PLOTLY, &CSS, &CHARTS_JS]
}

/// Writes every asset (and licence) into `<site>/assets/`.
pub fn write_all(site: &Path) -> anyhow::Result<()> {
    let dir = site.join("assets");
    std::fs::create_dir_all(&dir).map_err(|e| anyhow::anyhow!("{}: {e}", dir.display()))?;
    for asset in all() {
        let path = dir.join(asset.file_name());
        std::fs::write(&path, asset.bytes)
            .map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?;
        if let Some((name, bytes)) = asset.license {
            let path = dir.join(name);
            std::fs::write(&path, bytes).map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?;
        }
    }
    Ok(())
}
