"""Host folders in the guest: the registry and hot-mount steps (`manager`), virtiofsd
processes (`virtiofsd`), SFTP for reverse sshfs (`sftp`)."""
