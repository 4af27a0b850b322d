"""Host folders in the guest: the registry and hot-mount steps (`manager`), virtiofsd
processes (`virtiofsd`), SFTP for reverse sshfs and other guest-opened streams (`sftp`)."""
