//! `kernel_profile`: the daemon holding itself to what an older kernel offers, so that a newer
//! kernel (a test host, a VM) can stand for the kernels users run (Kylin V10's 4.19, UOS's 5.10).
//! Each feature a profile holds back is refused or worked around exactly as where it is missing.

use serde::{Deserialize, Serialize};

/// Which kernel the daemon behaves as if it ran on.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub enum KernelProfile {
    /// Whatever the kernel has, found by trying.
    #[default]
    #[serde(rename = "native")]
    Native,
    /// 5.10 (UOS, cloud LTS): no TCX, no bpf_set_retval.
    #[serde(rename = "5.10")]
    V5_10,
    /// 4.19 (Kylin V10): besides, no bpf links, no EDT, no fq horizon, no batch map updates.
    #[serde(rename = "4.19")]
    V4_19,
}

/// A kernel feature the daemon uses where it is there, and the first Linux version with it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Feature {
    Tcx,
    CgroupLinks,
    SetRetval,
    Edt,
    FqHorizon,
    BatchUpdate,
}

impl Feature {
    /// What it is, as the kernel names it, and the first version that has it.
    pub fn describe(self) -> (&'static str, &'static str) {
        match self {
            Self::Tcx => ("TCX links (BPF_TCX_INGRESS/EGRESS)", "6.6"),
            Self::CgroupLinks => ("bpf links for cgroup programs (BPF_LINK_CREATE)", "5.7"),
            Self::SetRetval => ("bpf_set_retval", "5.18"),
            Self::Edt => ("TC programs writing skb->tstamp (EDT)", "5.0"),
            Self::FqHorizon => ("fq's horizon", "5.7"),
            Self::BatchUpdate => ("BPF_MAP_UPDATE_BATCH", "5.6"),
        }
    }
}

impl KernelProfile {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Native => "native",
            Self::V5_10 => "5.10",
            Self::V4_19 => "4.19",
        }
    }

    /// Why this profile keeps the daemon from using `feature`, or `None` where it may.
    pub fn holds_back(self, feature: Feature) -> Option<String> {
        let lacks = match self {
            Self::Native => false,
            Self::V5_10 => matches!(feature, Feature::Tcx | Feature::SetRetval),
            Self::V4_19 => true,
        };
        let (what, since) = feature.describe();
        lacks.then(|| format!("kernel_profile = \"{}\" holds back {what} (Linux {since}+)", self.as_str()))
    }

    /// `Err` with the reason where the profile holds `feature` back.
    pub fn allows(self, feature: Feature) -> Result<(), String> {
        self.holds_back(feature).map_or(Ok(()), Err)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn profiles_hold_back_what_their_kernel_lacks() {
        let all = [
            Feature::Tcx,
            Feature::CgroupLinks,
            Feature::SetRetval,
            Feature::Edt,
            Feature::FqHorizon,
            Feature::BatchUpdate,
        ];
        assert!(all.iter().all(|f| KernelProfile::Native.allows(*f).is_ok()));
        assert!(all.iter().all(|f| KernelProfile::V4_19.allows(*f).is_err()));
        let held: Vec<_> = all.into_iter().filter(|f| KernelProfile::V5_10.allows(*f).is_err()).collect();
        assert_eq!(held, [Feature::Tcx, Feature::SetRetval]);
        assert_eq!(
            KernelProfile::V4_19.holds_back(Feature::SetRetval).unwrap(),
            "kernel_profile = \"4.19\" holds back bpf_set_retval (Linux 5.18+)"
        );
        for (text, profile) in
            [("native", KernelProfile::Native), ("5.10", KernelProfile::V5_10), ("4.19", KernelProfile::V4_19)]
        {
            let json = format!("\"{text}\"");
            assert_eq!(serde_json::from_str::<KernelProfile>(&json).unwrap(), profile);
            assert_eq!(profile.as_str(), text);
        }
        assert!(serde_json::from_str::<KernelProfile>("\"4.14\"").is_err());
    }
}
