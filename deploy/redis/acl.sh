#!/bin/sh
# Write the ACL file Redis loads from TopChef's template (users.acl): each
# password's placeholder replaced by that password's SHA-256 (the file keeps
# no password in clear), comments dropped, each user on one line.
#   REDIS_PASSWORD=... REDIS_WORKER_PASSWORD=... sh acl.sh users.acl /data/users.acl
# Passwords: letters and digits (they go into URLs), e.g. `openssl rand -hex 32`.
set -eu
template=$1
output=$2
digest() {
    case $2 in
        *[!A-Za-z0-9]*|'') echo "acl.sh: $1 must be letters and digits" >&2; exit 1 ;;
    esac
    printf %s "$2" | sha256sum | cut -d' ' -f1
}
core=$(digest REDIS_PASSWORD "${REDIS_PASSWORD:-}")
worker=$(digest REDIS_WORKER_PASSWORD "${REDIS_WORKER_PASSWORD:-}")
umask 077
# Drop comments and blank lines; an indented line goes on the line above.
awk '
    /^[ \t]*#([ \t]|$)/ { next }
    /^[ \t]*$/ { next }
    /^[ \t]/ { sub(/^[ \t]+/, ""); line = line " " $0; next }
    { if (line != "") print line; line = $0 }
    END { if (line != "") print line }
' "$template" |
    sed -e "s/{core-password-sha256}/$core/" -e "s/{worker-password-sha256}/$worker/" \
        > "$output.new"
mv "$output.new" "$output"
