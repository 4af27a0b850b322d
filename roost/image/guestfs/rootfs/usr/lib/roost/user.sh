# Sourced by identity (no fork on the way to the first login), and by
# anything else that needs a user made the way the boot makes the host's.
# roost_add_user NAME UID: the user with that name and uid (group alike),
# key-only login with the instance's authorized keys, and passwordless sudo
# as on Lima's images. Idempotent: every boot runs it again.
ROOST_LOGIN_SHELL=/usr/lib/roost/login-shell

roost_add_user() {
    local _name=$1 _uid=$2 _home _l _line=
    # The user's line of /etc/passwd, read without a fork.
    while IFS= read -r _l; do
        case $_l in "$_name":*) _line=$_l; break ;; esac
    done </etc/passwd
    if [ "$_name" = root ]; then
        _home=/root
    else
        _home=/home/$_name
    fi
    if [ -z "$_line" ]; then
        echo "$_name:x:$_uid:$_uid:$_name:$_home:$ROOST_LOGIN_SHELL" >>/etc/passwd
        echo "$_name:x:$_uid:" >>/etc/group
        echo "$_name:*:19000:0:99999:7:::" >>/etc/shadow
    elif [ "${_line##*:}" != "$ROOST_LOGIN_SHELL" ]; then
        # root, or a user made by an older image: the login shell that
        # reads /etc/environment, in the line's seventh field.
        sed -i "s#^\($_name\(:[^:]*\)\{5\}\):[^:]*\$#\1:$ROOST_LOGIN_SHELL#" /etc/passwd
    fi
    mkdir -p "$_home/.ssh"
    cp /mnt/cidata/authorized_keys "$_home/.ssh/authorized_keys"
    chmod 700 "$_home/.ssh"
    chmod 600 "$_home/.ssh/authorized_keys"
    chown -R "$_uid:$_uid" "$_home"
    # Named by uid: sudo skips files in sudoers.d whose name has a dot,
    # and a user name may have one.
    echo "$_name ALL=(ALL) NOPASSWD:ALL" >"/etc/sudoers.d/roost-user-$_uid"
    chmod 0440 "/etc/sudoers.d/roost-user-$_uid"
}
