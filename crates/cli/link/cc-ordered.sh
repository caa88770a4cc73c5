#!/bin/sh
# The workspace's linker driver on x86_64 Linux (.cargo/config.toml): `cc` with the same
# arguments, except that a `--symbol-ordering-file` (given only to release links of `meridian`,
# see crates/cli/build.rs) is first resolved against the symbols actually defined by the objects
# being linked.
#
# Why: startup-order.txt lists mangled names, and those carry hashes that change with every
# dependency, feature or compiler change (crate disambiguators), or with the code around them
# (`.llvm.N` suffixes of local functions LLVM made visible). The linker skips names it does not
# find, so a stale list silently loses most of its effect (an idle proxy's RSS grew from 9 to
# 16 MiB). Here each listed name and each defined name is reduced to a key without those hashes,
# and the linker is given, in the list's order, the defined names whose key a listed name has.
# The workspace builds with v0 symbol mangling (.cargo/config.toml), whose names spell out every
# generic argument, so a key names one function. A legacy-mangled name (`…17h<hash>E`) hashes its
# generic arguments instead; its key is kept only where it names at most two functions.
#
# Any other link goes to `cc` unchanged. Needs `nm` (binutils, there wherever `cc` is).
set -eu

order=""
for arg in "$@"; do
    case "$arg" in
        -Wl,--symbol-ordering-file=*) order="${arg#-Wl,--symbol-ordering-file=}" ;;
    esac
done
if [ -z "$order" ] || [ ! -f "$order" ]; then
    exec cc "$@"
fi

resolved="$order.resolved"
objects_list="$order.objects"
: >"$objects_list"
for arg in "$@"; do
    case "$arg" in
        *.o | *.rlib | *.a) [ -f "$arg" ] && printf '%s\n' "$arg" >>"$objects_list" ;;
    esac
done

# `nm` prints "name type [address size]" per defined symbol; only the name matters. An input it
# cannot read (LLVM bitcode in an rlib) is skipped: its code is in the LTO object anyway.
tr '\n' '\0' <"$objects_list" | xargs -0 nm --defined-only --format=posix --no-sort 2>/dev/null |
    awk -v listed="$order" '
        function key(name) {
            sub(/\.llvm\.[0-9]+$/, "", name)
            gsub(/Cs[0-9A-Za-z]*_/, "Cs_", name)
            sub(/17h[0-9a-f]+E$/, "17hE", name)
            return name
        }
        BEGIN {
            count = 0
            while ((getline line < listed) > 0) {
                if (line == "" || line ~ /^#/) continue
                k = key(line)
                if (!(k in rank)) rank[k] = ++count
            }
        }
        # Archive member headers ("lib.a[member.o]:") and blank lines have no symbol type.
        NF >= 2 && $2 ~ /^[TtWw]$/ {
            k = key($1)
            if ((k in rank) && !($1 in seen)) {
                seen[$1] = 1
                found[rank[k]]++
                names[rank[k]] = names[rank[k]] $1 "\n"
            }
        }
        END { for (i = 1; i <= count; i++) if ((i in names) && found[i] <= 2) printf "%s", names[i] }
    ' >"$resolved"

# Run cc with the resolved list in place of the listed one.
first=1
for arg in "$@"; do
    if [ "$first" = 1 ]; then
        set --
        first=0
    fi
    case "$arg" in
        -Wl,--symbol-ordering-file=*) set -- "$@" "-Wl,--symbol-ordering-file=$resolved" ;;
        *) set -- "$@" "$arg" ;;
    esac
done
exec cc "$@"
