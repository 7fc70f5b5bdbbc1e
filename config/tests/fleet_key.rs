//! The fleet key file (`[cluster] key_file`): its mode and its content.
#![allow(clippy::unwrap_used, reason = "tests")]

use std::os::unix::fs::PermissionsExt;

#[test]
fn a_world_readable_or_all_zero_fleet_key_is_refused_and_a_private_random_one_is_read() {
    let dir = tempfile::tempdir().unwrap();
    let key = dir.path().join("fleet.key");
    std::fs::write(&key, format!("{}\n", "ab".repeat(32))).unwrap();
    std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o644)).unwrap();
    let world_readable = proxy_config::config::read_fleet_key(&key);
    std::fs::write(&key, format!("{}\n", "0".repeat(64))).unwrap();
    std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o600)).unwrap();
    let zeros = proxy_config::config::read_fleet_key(&key);
    let world_readable = world_readable.unwrap_err();
    assert!(
        world_readable.contains("open to every user (mode 0644)"),
        "{world_readable}"
    );
    assert!(zeros.unwrap_err().contains("one byte repeated"));
    std::fs::write(&key, format!("{}\n", "0123456789abcdef".repeat(4))).unwrap();
    // Readable by its group (root:controld 0640) is how a secret is often shared.
    std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o640)).unwrap();
    assert_eq!(
        proxy_config::config::read_fleet_key(&key).unwrap()[..2],
        [0x01, 0x23]
    );
}
