#!/usr/bin/env bash
# Tests of the nvme-cli example, run inside the VM of scripts/vm (see
# scripts/test.sh): every command, JSON output parsed, a file written then
# read back byte-identical, and each bad input with its message and exit
# status. Usage: cli-test.sh CLI-BINARY SCENARIO   (scenario: bound,
# nvme-driver, zoned or protection in the VM, as scripts/test.sh boots it:
# zoned two namespaces of 64 MiB, the second zoned, protection six
# namespaces formatted with metadata and protection information; sim on
# any machine: the CLI's in-process nvme-sim device, which keeps nothing
# between commands, so every check there is one command or one batch of
# them). Prints "N passed, N failed" and exits non-zero on failure.
set -uo pipefail

cli=$1
scenario=${2:-bound}
dev=0000:00:03.0
work=$(mktemp -d)
passed=0
failed=0

ok() { passed=$((passed + 1)); echo "PASS $*"; }
bad() { failed=$((failed + 1)); echo "FAIL $*"; }

# expect NAME STATUS PATTERN -- COMMAND...: exit status STATUS and stderr
# (for errors) or stdout matching PATTERN.
expect() {
    local name=$1 want=$2 pat=$3
    shift 4
    local out err status
    out=$("$@" 2>"$work/err")
    status=$?
    err=$(cat "$work/err")
    if [ "$status" != "$want" ]; then
        bad "$name: exit $status, wanted $want ($err)"
    elif ! printf '%s\n%s\n' "$out" "$err" | grep -q -- "$pat"; then
        bad "$name: output does not match '$pat': $out $err"
    else
        ok "$name"
    fi
}

# json NAME PYTHON-EXPR -- COMMAND...: stdout parses as JSON and EXPR on it
# (bound to j) is true.
json() {
    local name=$1 expr=$2
    shift 3
    if "$@" 2>"$work/err" | python3 -c "import json,sys; j=json.load(sys.stdin); sys.exit(0 if ($expr) else 1)"; then
        ok "$name"
    else
        bad "$name: JSON check '$expr' failed ($(cat "$work/err"))"
    fi
}

# The admin commands operators use and passthrough, on device $1 (the start
# of the model string of its Identify in $2).
admin_checks() {
    local d=$1 mn=$2
    json "get-feature --json (number of queues)" 'j["feature_id"] == 7 and j["data"] is None' -- "$cli" get-feature $d -f 7 --json
    expect "get-feature text" 0 "^get-feature:0x07 (sel 0), Current value:0x" -- "$cli" get-feature $d -f 0x7
    json "get-feature with data" 'len(j["data"]) == 2 * 64' -- "$cli" get-feature $d -f 0x07 -l 64 --json
    expect "set-feature (temperature threshold, 100 C)" 0 "^set-feature:0x04, value:0x00000175" -- "$cli" set-feature $d -f 4 -v 0x175
    expect "set-feature of the driver's own" 2 "the driver sets this feature" -- "$cli" set-feature $d -f 7 -v 0
    json "get-log SMART at an offset" 'j["log_id"] == 2 and j["offset"] == 4 and len(j["data"]) == 2 * 16' -- "$cli" get-log $d -i 2 -l 16 -o 4 --json
    expect "get-log text" 0 "^0000: " -- "$cli" get-log $d -i 0x02 -l 32
    "$cli" get-log $d -i 2 -l 512 -b >"$work/smart.bin"
    if [ "$(stat -c %s "$work/smart.bin")" = 512 ]; then ok "get-log --raw-binary"; else bad "get-log --raw-binary: wrong size"; fi
    expect "get-log of a bad length" 2 "multiples of 4" -- "$cli" get-log $d -i 2 -l 6
    json "error-log --json" '"errors" in j' -- "$cli" error-log $d --json
    json "fw-log --json" 'j["active_slot"] >= 1 and "frs1" in j' -- "$cli" fw-log $d --json
    expect "fw-log text" 0 "^frs1 : " -- "$cli" fw-log $d
    expect "format without --yes" 2 "add --yes" -- "$cli" format $d -n 1 -l 0
    expect "format to a format the namespace lacks" 1 "Invalid Format" -- "$cli" format $d -n 1 -l 15 --yes
    expect "admin-passthru Identify" 0 "$mn" -- "$cli" admin-passthru $d -O 6 --cdw10 1 -l 4096 -r
    expect "admin-passthru too short for Identify" 2 "moves 4096 bytes" -- "$cli" admin-passthru $d -O 6 --cdw10 1 -l 512 -r
    expect "admin-passthru of a queue command" 2 "the driver owns the queues" -- "$cli" admin-passthru $d -O 5
    json "io-passthru read" 'j["opcode"] == 2 and len(j["data"]) == 2 * 512' -- "$cli" io-passthru $d -O 2 -n 1 -l 512 -r --json
    json "show-regs --json" 'j["csts"] & 1 == 1 and j["cc"] & 1 == 1 and j["cap"] > 0' -- "$cli" show-regs $d --json
    expect "reset" 0 "reset: success" -- "$cli" reset $d
}

# The zns plugin's commands on the sim device sim:nvm,zoned (64 zones of
# 2048 blocks, all empty at every invocation), one command each.
zns_checks_sim() {
    local z=sim:nvm,zoned
    head -c 4096 /dev/urandom >"$work/zdata"
    expect "zns report-zones" 0 "^nr_zones: 64$" -- "$cli" zns report-zones $z -n 2
    expect "zns report-zones: nvme-cli's zone line" 0 "^SLBA: 0x800      WP: 0x800      Cap: 0x800      State: EMPTY        Type: SEQWRITE_REQ   Attrs: 0x0$" -- "$cli" zns report-zones $z -n 2 -d 2
    json "zns report-zones --json" 'j["nr_zones"] == 3 and [(d["slba"], d["wp"], d["cap"], d["state"], d["type"], d["attrs"]) for d in j["zone_list"]] == [(s, s, 2048, "EMPTY", "SEQWRITE_REQ", 0) for s in (4096, 6144, 8192)]' -- "$cli" zns report-zones $z -n 2 -s 4100 -d 3 --json
    json "zns report-zones --state empty" 'j["nr_zones"] == 64' -- "$cli" zns report-zones $z -n 2 -S 1 --json
    json "zns report-zones --state full" 'j["nr_zones"] == 0 and j["zone_list"] == []' -- "$cli" zns report-zones $z -n 2 --state 5 --json
    expect "zns report-zones of a bad state" 2 "0 to 7" -- "$cli" zns report-zones $z -n 2 -S 8
    expect "zns report-zones of an NVM namespace" 2 "namespace 1 is not zoned" -- "$cli" zns report-zones $z -n 1
    expect "zns report-zones past the end" 2 "past the end of namespace 2" -- "$cli" zns report-zones $z -n 2 -s 131072
    expect "zns zone-append" 0 "^Success appended data to LBA 0x800$" -- "$cli" zns zone-append $z -n 2 -s 0x800 -d "$work/zdata"
    json "zns zone-append --json" 'j["command"] == "zone-append" and j["zslba"] == 4096 and j["lba"] == 4096 and j["blocks"] == 2' -- "$cli" zns zone-append $z -n 2 --zslba 4096 --data-size 1024 --data "$work/zdata" --json
    expect "zns zone-append from stdin" 0 "^Success appended data to LBA 0x0$" -- sh -c '"$1" zns zone-append "$2" -n 2 -s 0 <"$3"' _ "$cli" $z "$work/zdata"
    expect "zns zone-append off a zone start" 2 "LBA 2049 is not the start of a zone (zones of 2048 blocks)" -- "$cli" zns zone-append $z -n 2 -s 2049 -d "$work/zdata"
    expect "zns zone-append of part of a block" 2 "not a non-zero multiple of the 512-byte block size" -- "$cli" zns zone-append $z -n 2 -s 0 -z 1000 -d "$work/zdata"
    expect "zns zone-append of more than the data" 2 "the data holds 4096 bytes" -- "$cli" zns zone-append $z -n 2 -s 0 -z 8192 -d "$work/zdata"
    head -c $((256 << 10)) /dev/zero >"$work/zbig"
    expect "zns zone-append over MDTS (ZASL 0)" 2 "Zone Append bytes: 262144, over the limit of 131072 (MDTS)" -- "$cli" zns zone-append $z -n 2 -s 0 -d "$work/zbig"
    expect "zns zone-append to an NVM namespace" 2 "namespace 1 is not zoned" -- "$cli" zns zone-append $z -n 1 -s 0 -d "$work/zdata"
    expect "zns reset-zone" 0 "^reset-zone: Success, action:4 zone:800 all:0 nsid:2$" -- "$cli" zns reset-zone $z -n 2 -s 0x800 --yes
    expect "zns reset-zone --select-all" 0 "^reset-zone: Success, action:4 zone:0 all:1 nsid:2$" -- "$cli" zns reset-zone $z -n 2 -a -y
    expect "zns reset-zone without --yes" 2 "add --yes" -- "$cli" zns reset-zone $z -n 2 -s 0
    expect "zns open-zone" 0 "^open-zone: Success, action:3 zone:1000 all:0 nsid:2$" -- "$cli" zns open-zone $z -n 2 -s 0x1000
    json "zns finish-zone --json" 'j["command"] == "finish-zone" and j["zone"] == 4096 and j["action"] == 2 and not j["select_all"]' -- "$cli" zns finish-zone $z -n 2 -s 4096 --json
    expect "zns close-zone of an empty zone: Invalid Zone State Transition" 1 "^nvme-cli: Close Zone failed: Invalid Zone State Transition (SCT 0x1, SC 0xbf" -- "$cli" zns close-zone $z -n 2 -s 0
    expect "zns offline-zone of an empty zone" 1 "Offline Zone failed: Invalid Zone State Transition" -- "$cli" zns offline-zone $z -n 2 -s 0 --yes
    expect "zns close-zone off a zone start" 2 "LBA 5 is not the start of a zone" -- "$cli" zns close-zone $z -n 2 -s 5
    expect "zns close-zone --select-all (none open)" 0 "^close-zone: Success, action:1 zone:0 all:1 nsid:2$" -- "$cli" zns close-zone $z -n 2 -a
}

# The optional NVM commands on the sim device, each check one command
# (fresh blocks read as zeroes).
io_command_checks_sim() {
    local d=sim
    head -c 4096 /dev/zero >"$work/zero4k"
    head -c 4096 /dev/urandom >"$work/rand4k"
    expect "compare: equal" 0 "^compare: Success$" -- "$cli" compare $d -s 0 -d "$work/zero4k"
    expect "compare from stdin, --block-count 0-based" 0 "^compare: Success$" -- sh -c '"$1" compare sim -s 8 -c 3 <"$2"' sh "$cli" "$work/zero4k"
    expect "compare: a mismatch names Compare Failure" 1 "^nvme-cli: Compare failed: Compare Failure (SCT 0x2, SC 0x85, do not retry, more info in the error log): the data did not match in a Compare command$" -- "$cli" compare $d -s 0 -d "$work/rand4k"
    expect "compare: the mismatch's error log entry" 1 "^  error log entry 1 (SQ 1, command 0x[0-9a-f]*, opcode 0x05): namespace 1, LBA [0-7] " -- "$cli" compare $d -s 0 -d "$work/rand4k"
    json "compare --json" 'j["command"] == "compare" and j["lba"] == 16 and j["blocks"] == 2 and j["status"] == "success"' -- "$cli" compare $d -s 16 -z 1024 -d "$work/zero4k" --json
    expect "compare: size and count disagree" 2 "does not match --block-count" -- "$cli" compare $d -s 0 -c 1 -z 4096 -d "$work/zero4k"
    expect "compare: data too short" 2 "the data holds 4096 bytes, the compare needs 8192" -- "$cli" compare $d -s 0 -z 8192 -d "$work/zero4k"
    expect "compare past the end" 2 "past the end of namespace 1" -- "$cli" compare $d -s 131070 -d "$work/zero4k"
    expect "verify" 0 "^NVME Verify Success$" -- "$cli" verify $d -s 0 -c 4095
    json "verify --json" 'j["command"] == "verify" and j["blocks"] == 1 and j["status"] == "success"' -- "$cli" verify $d -s 7 --json
    expect "verify past the end" 2 "past the end of namespace 1" -- "$cli" verify $d -s 131071 -c 1
    expect "write-uncor without --yes" 2 "add --yes" -- "$cli" write-uncor $d -s 0 -c 7
    expect "write-uncor" 0 "^NVME Write Uncorrectable Success$" -- "$cli" write-uncor $d -s 0 -c 7 --yes
    expect "copy" 0 "^NVMe Copy: success$" -- "$cli" copy $d -d 1000 -s 0,100,200 -b 7,3,0 --yes
    json "copy --json" 'j["command"] == "copy" and j["sdlba"] == 1000 and j["ranges"] == [{"slba": 0, "blocks": 8}, {"slba": 100, "blocks": 4}] and j["blocks"] == 12' -- "$cli" copy $d -d 1000 -s 0,100 -b 7,3 --yes --json
    expect "copy without --yes" 2 "add --yes" -- "$cli" copy $d -d 1000 -s 0 -b 7
    expect "copy: lists of different lengths" 2 "2 source starting blocks (--slbs) but 1 block counts" -- "$cli" copy $d -d 1000 -s 0,8 -b 7 --yes
    expect "copy over the namespace's range length (MSSRL)" 2 "Copy source range length in blocks: 129, over the limit of 128 (Identify Namespace MSSRL)" -- "$cli" copy $d -d 1000 -s 0 -b 128 --yes
    expect "copy over the namespace's copy length (MCL)" 2 "Copy length in blocks: 192, over the limit of 128 (Identify Namespace MCL)" -- "$cli" copy $d -d 1000 -s 0,200 -b 127,63 --yes
    expect "copy of too many ranges (MSRC)" 2 "Copy source ranges: 129, over the limit of 128 (Identify Namespace MSRC)" -- "$cli" copy $d -d 1000 -s "$(seq -s, 0 128)" -b "$(printf '0%.0s,' $(seq 128))0" --yes
    expect "copy to past the end" 2 "past the end of namespace 1" -- "$cli" copy $d -d 131070 -s 0 -b 7 --yes
    expect "dsm hints" 0 "^NVMe DSM: success$" -- "$cli" dsm $d -s 0,100 -b 8,8 -a 0x102,1 --idr --idw
    expect "dsm --ad without --yes" 2 "add --yes" -- "$cli" dsm $d -s 0 -b 8 --ad
    json "dsm --ad of 300 ranges (two commands) --json" 'j["command"] == "dsm" and j["ranges"] == 300 and j["attributes"] == {"ad": True, "idw": False, "idr": False}' -- "$cli" dsm $d -s "$(seq -s, 0 2 598)" -b "$(printf '1%.0s,' $(seq 299))1" --ad --yes --json
    json "dsm --cdw11 sets the attributes" 'j["attributes"] == {"ad": False, "idw": True, "idr": True}' -- "$cli" dsm $d -s 0 -b 8 --cdw11 3 --json
    expect "dsm: lists of different lengths" 2 "the range lists differ in length" -- "$cli" dsm $d -s 0,8 -b 8
    expect "dsm past the end" 2 "past the end of namespace 1" -- "$cli" dsm $d -s 131071 -b 2 --ad --yes
    # refused WITHOUT NAME ARGS...: the sim device without command WITHOUT
    # refuses ARGS, naming the command NAME.
    refused() {
        local without=$1 name=$2
        shift 2
        expect "$1 refused on a device without $without" 2 "the controller does not support the $name command" -- \
            env NVME_SIM_WITHOUT="$without" "$cli" "$@"
    }
    refused compare Compare compare $d -s 0 -d "$work/zero4k"
    refused verify Verify verify $d -s 0
    refused write-uncor "Write Uncorrectable" write-uncor $d -s 0 --yes
    refused copy Copy copy $d -d 100 -s 0 -b 0 --yes
    refused dsm "Dataset Management" dsm $d -s 0 -b 1
    refused dsm "Dataset Management" trim $d --lba 0 --blocks 8 --yes
    refused write-zeroes "Write Zeroes" write-zeroes $d --lba 0 --blocks 8 --yes
    expect "NVME_SIM_WITHOUT of an unknown command" 2 "unknown command 'frob'" -- env NVME_SIM_WITHOUT=frob "$cli" id-ctrl $d
}

# Metadata and end-to-end protection on sim devices with nvme-sim's
# namespace kinds (meta8, pi1, pi2-ext, pi3-first, pi1-crc64,
# pi1-ms16-ext). A command's blocks are gone when it ends, so what needs
# a write and then a read runs as a batch (one process, the device kept).
protection_checks_sim() {
    local p=sim:meta8,pi1,pi2-ext,pi3-first,pi1-crc64,pi1-ms16-ext
    head -c 4096 /dev/urandom >"$work/pdata"
    head -c 64 /dev/urandom >"$work/pmeta"
    head -c 4160 /dev/urandom >"$work/pext"
    head -c 64 /dev/zero >"$work/pzero"
    expect "id-ns: dps of a type 1 namespace" 0 "^dps     : 0x1$" -- "$cli" id-ns $p -n 2
    expect "id-ns: the type 1 line" 0 "Protection Information Type 1 Enabled" -- "$cli" id-ns $p -n 2
    expect "id-ns: PI first (dps bit 3)" 0 "^dps     : 0xb$" -- "$cli" id-ns $p -n 4
    expect "id-ns: a 64-bit guard" 0 "guard : 64-bit (CRC-64 NVMe), pif:2" -- "$cli" id-ns $p -n 5
    expect "id-ns: metadata capabilities" 0 "^mc      : 0x3$" -- "$cli" id-ns $p -n 1
    json "id-ns --json: extended LBAs, type 2" 'j["flbas"] == 0x10 and j["extended_lba"] and j["dps"] == 2 and j["metadata_size"] == 8 and j["pi"] == {"type": 2, "first": False, "guard_bits": 16, "pif": 0}' -- "$cli" id-ns $p -n 3 --json
    json "id-ns --json: metadata without PI" 'j["dps"] == 0 and j["pi"] is None and j["metadata_size"] == 8 and not j["extended_lba"]' -- "$cli" id-ns $p -n 1 --json
    json "id-ns --json: no metadata" 'j["dps"] == 0 and j["metadata_size"] == 0' -- "$cli" id-ns sim -n 1 --json

    printf '%s\n' \
        "write $p -n 1 --lba 16 -i $work/pdata -M $work/pmeta -y 8 --yes" \
        "read $p -n 1 --lba 16 --blocks 8 -o $work/pdata.back -M $work/pmeta.back" \
        "compare $p -n 1 -s 16 -d $work/pdata -M $work/pmeta" >"$work/b-meta"
    expect "write -M, read -M and compare -M in a batch" 0 "compare: Success" -- "$cli" batch "$work/b-meta"
    if cmp -s "$work/pdata" "$work/pdata.back" && cmp -s "$work/pmeta" "$work/pmeta.back"; then
        ok "write -M then read -M: the same data and metadata"
    else
        bad "write -M then read -M: data or metadata differ"
    fi
    printf '%s\n' \
        "write $p -n 3 --lba 0 -i $work/pext --yes" \
        "read $p -n 3 --lba 0 --blocks 8 -o $work/pext.back" >"$work/b-ext"
    expect "extended LBAs: data and metadata in the data file" 0 "" -- "$cli" batch "$work/b-ext"
    if cmp -s "$work/pext" "$work/pext.back"; then ok "extended LBAs: 520-byte blocks read back the same"; else bad "extended LBAs: the blocks differ"; fi
    printf '%s\n' \
        "write $p -n 2 --lba 8 -i $work/pdata -p 8 --yes" \
        "read $p -n 2 --lba 8 --blocks 8 -o $work/pract.strip -p 12" \
        "read $p -n 2 --lba 8 --blocks 8 -o $work/pract.back -M $work/pract.meta -p 7" >"$work/b-pract"
    expect "PRACT write, reads with the guard (and every) check" 0 "" -- "$cli" batch "$work/b-pract"
    if cmp -s "$work/pdata" "$work/pract.strip" && cmp -s "$work/pdata" "$work/pract.back" && [ "$(stat -c %s "$work/pract.meta")" = 64 ]; then
        ok "PRACT write: the data reads back, with 8 tuples"
    else
        bad "PRACT write: the data or tuples read back wrong"
    fi
    expect "read of a PI-only namespace without -M (the controller strips)" 0 "" -- "$cli" read $p -n 2 --lba 0 --blocks 8 -o "$work/strip"
    if [ "$(stat -c %s "$work/strip")" = 4096 ]; then ok "PI-only read: 4096 bytes"; else bad "PI-only read: wrong size"; fi
    printf '%s\n' \
        "write $p -n 2 --lba 8 -i $work/pdata -p 8 --yes" \
        "sim-corrupt $p -n 2 --lba 10 --offset 7" \
        "read $p -n 2 --lba 8 --blocks 8 -o $work/x -p 12" >"$work/b-damage"
    expect "a damaged block: End-to-end Guard Check Error" 1 "Read failed: End-to-end Guard Check Error (SCT 0x2, SC 0x82" -- "$cli" batch "$work/b-damage"
    printf '%s\n' \
        "write $p -n 2 --lba 0 -i $work/pdata -M $work/pzero -p 0 --yes" \
        "read $p -n 2 --lba 0 --blocks 8 -o $work/x -M $work/x.meta -p 4" >"$work/b-zero"
    expect "zeroed tuples fail the guard check" 1 "End-to-end Guard Check Error" -- "$cli" batch "$work/b-zero"
    printf '%s\n' \
        "write $p -n 4 --lba 0 -i $work/pdata -p 8 -a 0x1234 --yes" \
        "read $p -n 4 --lba 0 --blocks 8 -o $work/x -p 10 -a 0x1234 -m 0xffff" \
        "read $p -n 4 --lba 0 --blocks 8 -o $work/x -p 10 -a 0x4321 -m 0xffff" >"$work/b-app"
    expect "application tag check: the right tag passes, another fails" 1 "b-app:3: Read failed: End-to-end Application Tag Check Error" -- "$cli" batch "$work/b-app"
    printf '%s\n' \
        "write $p -n 3 --lba 0 -i $work/pdata -p 8 -r 0x500 --yes" \
        "read $p -n 3 --lba 0 --blocks 8 -o $work/x -p 9 -r 0x500" \
        "read $p -n 3 --lba 0 --blocks 8 -o $work/x -p 9" >"$work/b-ref"
    expect "type 2 reference tags: the written one passes, another fails" 1 "b-ref:3: Read failed: End-to-end Reference Tag Check Error" -- "$cli" batch "$work/b-ref"
    printf '%s\n' \
        "write $p -n 5 --lba 100 -i $work/pdata -p 8 --yes" \
        "read $p -n 5 --lba 100 --blocks 8 -o $work/crc64.back -p 15" >"$work/b-crc64"
    expect "64-bit guard: PRACT write and checked read" 0 "" -- "$cli" batch "$work/b-crc64"
    if cmp -s "$work/pdata" "$work/crc64.back"; then ok "64-bit guard: the data reads back"; else bad "64-bit guard: the data differs"; fi
    head -c 10 /dev/urandom >"$work/pshort"
    expect "a metadata file of the wrong length is refused" 2 "the metadata file .* holds 10 bytes: 8 blocks of 8 bytes of metadata need 64" -- "$cli" write $p -n 1 --lba 0 -i "$work/pdata" -M "$work/pshort" --yes
    expect "separate metadata without -M is refused" 2 "give a metadata file (-M/--metadata)" -- "$cli" write $p -n 1 --lba 0 -i "$work/pdata" --yes
    expect "read of separate metadata without -M is refused" 2 "give a metadata file (-M/--metadata)" -- "$cli" read $p -n 1 --lba 0 --blocks 8 -o "$work/x"
    expect "--prinfo on a namespace without PI is refused" 2 "namespace 1 is formatted without it" -- "$cli" write $p -n 1 --lba 0 -i "$work/pdata" -M "$work/pmeta" -p 8 --yes
    expect "--prinfo on a namespace without metadata is refused" 2 "namespace 1 is formatted without it" -- "$cli" read sim -n 1 --lba 0 --blocks 8 -o "$work/x" -p 1
    expect "-M on a namespace without metadata is refused" 2 "namespace 1 is formatted without metadata" -- "$cli" read sim -n 1 --lba 0 --blocks 8 -o "$work/x" -M "$work/x.meta"
    expect "-M on extended LBAs is refused" 2 "extended LBAs: each block's metadata follows its data in the data file" -- "$cli" write $p -n 3 --lba 0 -i "$work/pext" -M "$work/pmeta" --yes
    expect "--metadata-size that does not match" 2 "--metadata-size 16 does not match namespace 1's 8 bytes" -- "$cli" read $p -n 1 --lba 0 --blocks 8 -o "$work/x" -M "$work/x.meta" -y 16
    expect "--prinfo over 4 bits" 2 "PRINFO is 4 bits" -- "$cli" read $p -n 2 --lba 0 --blocks 8 -o "$work/x" -p 16
    expect "extended data not whole blocks" 2 "not a multiple of 520 bytes per block" -- "$cli" write $p -n 3 --lba 0 -i "$work/pdata" --yes
    expect "sim-corrupt of a device that is not a sim" 2 "" -- "$cli" sim-corrupt 0000:00:1f.7 --lba 0 --offset 0
}

if [ "$scenario" = nvme-driver ]; then
    expect "id-ctrl on a device still on the nvme driver" 2 "bound to nvme" -- "$cli" id-ctrl $dev
    json "list shows the kernel driver" 'j[0]["driver"] == "nvme" and not j[0]["usable"]' -- "$cli" list --json

    # scripts/setup-vfio.sh: from the kernel driver to vfio-pci and back.
    setup=scripts/setup-vfio.sh
    export HUGEMEM=64
    expect "setup status on nvme" 0 "$dev  *QEMU NVMe Ctrl  *nvme  *3  *yes  *no" -- $setup status
    expect "setup --dry-run bind" 0 "would write 'vfio-pci' to .*$dev/driver_override" -- $setup --dry-run bind $dev
    expect "dry run changed nothing" 0 "$dev  *QEMU NVMe Ctrl  *nvme" -- $setup status
    # A disk in use (active swap here: it needs no filesystem module in the
    # guest) is refused.
    if mkswap /dev/nvme0n1 >/dev/null && swapon /dev/nvme0n1; then
        expect "bind refuses a disk in use" 1 "/dev/nvme0n1 is active swap" -- $setup bind $dev
        expect "status shows it in use" 0 "/dev/nvme0n1 is active swap" -- $setup status
        swapoff /dev/nvme0n1
    else
        bad "could not enable swap on /dev/nvme0n1 to test the refusal"
    fi
    expect "setup bind" 0 "$dev: bound to vfio-pci (was nvme), /dev/vfio/3" -- $setup bind 00:03.0
    expect "bind is idempotent" 0 "already on vfio-pci" -- $setup bind $dev
    expect "status after bind" 0 "$dev  *-  *vfio-pci  *3  *yes" -- $setup status
    expect "hugepages reserved" 0 "hugepages (2 MiB): 32 total" -- $setup status
    json "usable by the CLI after bind" 'j["mn"] == "QEMU NVMe Ctrl"' -- "$cli" id-ctrl $dev --json
    expect "setup reset" 0 "$dev: back on nvme (was vfio-pci) /dev/nvme0n1" -- $setup reset $dev
    if [ -b /dev/nvme0n1 ]; then ok "the kernel's /dev/nvme0n1 is back"; else bad "/dev/nvme0n1 missing after reset"; fi
    expect "reset is idempotent" 0 "already on nvme" -- $setup reset $dev
    expect "setup of a bad address" 1 "is not an NVMe function" -- $setup bind 0000:00:1f.7
    expect "setup of a malformed address" 1 "malformed PCI address" -- $setup bind nonsense
elif [ "$scenario" = sim ]; then
    dev=sim
    json "id-ctrl --json" 'j["mn"] == "nvme-sim" and j["sn"] == "SIM0001" and j["ver"] == 0x10400' -- "$cli" id-ctrl $dev --json
    expect "id-ctrl text" 0 "mn        : nvme-sim" -- "$cli" id-ctrl $dev
    # The driver's log reaches stderr, at the level RUST_LOG asks for
    # (warnings by default).
    expect "RUST_LOG=info shows the bring-up" 0 "controller up: nvme-sim" -- env RUST_LOG=info "$cli" id-ctrl $dev
    if "$cli" id-ctrl $dev 2>&1 >/dev/null | grep -q "controller up"; then
        bad "info messages are hidden by default"
    else
        ok "info messages are hidden by default"
    fi
    json "id-ns --json" 'j["nsze"] == 131072 and j["block_size"] == 512 and j["lbafs"][0]["in_use"]' -- "$cli" id-ns $dev -n 1 --json
    head -c $((5 << 20)) /dev/urandom >"$work/data"
    expect "write a file (5 MiB, chunked)" 0 "10240 blocks at LBA 4096: success" -- "$cli" write $dev -n 1 --lba 4096 -i "$work/data" --yes
    head -c 1000 /dev/urandom >"$work/odd"
    expect "write from stdin" 0 "2 blocks at LBA 8: success" -- sh -c '"$1" write sim -n 1 --lba 8 --pad --yes <"$2"' sh "$cli" "$work/odd"
    expect "read to a file" 0 "" -- "$cli" read $dev -n 1 --lba 0 --size $((3 << 20)) -o "$work/back"
    if [ "$(stat -c %s "$work/back")" = $((3 << 20)) ] && [ "$(tr -d '\0' <"$work/back" | wc -c)" = 0 ]; then
        ok "read of fresh blocks: 3 MiB of zeroes"
    else
        bad "read of fresh blocks"
    fi
    "$cli" read $dev -n 1 --lba 0 --blocks 8 >"$work/stdout-read"
    if [ "$(stat -c %s "$work/stdout-read")" = 4096 ]; then ok "read to stdout"; else bad "read to stdout: wrong size"; fi
    expect "write without --yes" 2 "add --yes" -- "$cli" write $dev -n 1 --lba 4096 -i "$work/odd"
    expect "size not a multiple of the block size" 2 "not a multiple of the 512-byte block size" -- "$cli" write $dev -n 1 --lba 4096 -i "$work/odd" --yes
    expect "write --pad" 0 "2 blocks at LBA 4096: success" -- "$cli" write $dev -n 1 --lba 4096 -i "$work/odd" --pad --yes
    : >"$work/empty"
    expect "empty input" 2 "nothing to write" -- "$cli" write $dev -n 1 --lba 0 -i "$work/empty" --yes
    expect "missing input file" 2 "No such file" -- "$cli" write $dev -n 1 --lba 0 -i "$work/absent" --yes
    expect "read past the end" 2 "past the end of namespace 1" -- "$cli" read $dev -n 1 --lba 131070 --blocks 8 -o "$work/x"
    expect "write past the end" 2 "past the end of namespace 1" -- "$cli" write $dev -n 1 --lba 131071 -i "$work/data" --yes
    expect "inactive namespace" 2 "namespace 7 is not active" -- "$cli" id-ns $dev -n 7
    expect "a failed read names its status" 1 "^nvme-cli: Read failed: Unrecovered Read Error (SCT 0x2, SC 0x81, do not retry, more info in the error log): the read data could not be recovered from the media$" -- env NVME_SIM_READ_ERROR=100 "$cli" read $dev -n 1 --lba 96 --blocks 8 -o "$work/x"
    expect "a failed read prints its error log entry" 1 "^  error log entry 1 (SQ 1, command 0x[0-9a-f]*, opcode 0x02): namespace 1, LBA 100 (0x64)$" -- env NVME_SIM_READ_ERROR=100 "$cli" read $dev -n 1 --lba 96 --blocks 8 -o "$work/x"
    expect "read without a length" 2 "give --blocks or --size" -- "$cli" read $dev -n 1 --lba 0
    expect "read size not a multiple" 2 "not a multiple of the 512-byte block size" -- "$cli" read $dev -n 1 --lba 0 --size 1000
    expect "flush" 0 "success" -- "$cli" flush $dev -n 1
    expect "trim without --yes" 2 "add --yes" -- "$cli" trim $dev -n 1 --lba 0 --blocks 8
    json "trim --json" 'j["command"] == "trim" and j["status"] == "success" and j["blocks"] == 64' -- "$cli" trim $dev -n 1 --lba 8192 --blocks 64 --yes --json
    expect "write-zeroes" 0 "success" -- "$cli" write-zeroes $dev -n 1 --lba 4096 --blocks 8 --yes
    expect "write-zeroes past the end" 2 "past the end" -- "$cli" write-zeroes $dev -n 1 --lba 131070 --blocks 8 --yes
    json "smart-log --json" 'j["host_write_commands"] == 0 and j["temperature"] > 200' -- "$cli" smart-log $dev --json
    expect "smart-log text" 0 "temperature" -- "$cli" smart-log $dev
    expect "usage error" 2 "Usage" -- "$cli" frobnicate
    admin_checks $dev nvme-sim
    io_command_checks_sim

    # I/O command sets, on a sim device with an NVM and a zoned namespace
    # (zones of 2048 blocks, at most 8 open and 14 active).
    zdev=sim:nvm,zoned
    expect "list-ns" 0 '^\[   1\]:0x2 zoned$' -- "$cli" list-ns $zdev
    json "list-ns --json" 'j == {"namespaces": [{"nsid": 1, "command_set": "nvm", "csi": 0}, {"nsid": 2, "command_set": "zoned", "csi": 2}]}' -- "$cli" list-ns $zdev --json
    json "list-ns --csi zoned (CNS 07h)" '[n["nsid"] for n in j["namespaces"]] == [2]' -- "$cli" list-ns $zdev --csi zoned --json
    json "list-ns --csi nvm" '[n["nsid"] for n in j["namespaces"]] == [1]' -- "$cli" list-ns $zdev --csi 0 --json
    expect "list-ns --csi of no command set" 2 "is not nvm, key-value, zoned" -- "$cli" list-ns $zdev --csi frob
    expect "sim of an unknown namespace kind" 2 "unknown namespace kind 'frob'" -- "$cli" list-ns sim:nvm,frob
    json "id-ns of an NVM namespace" 'j["command_set"] == "nvm" and j["csi"] == 0 and "zoned" not in j' -- "$cli" id-ns $zdev -n 1 --json
    json "id-ns of a zoned namespace" 'j["command_set"] == "zoned" and j["csi"] == 2 and j["nsze"] == 131072 and j["zoned"] == {"zone_size": 2048, "zone_bytes": 1048576, "max_open": 8, "max_active": 14}' -- "$cli" id-ns $zdev -n 2 --json
    expect "id-ns text: command set" 0 "csi     : 2 (Zoned Namespace)" -- "$cli" id-ns $zdev -n 2
    expect "id-ns text: zone size" 0 "zsze    : 0x800 (2048 blocks, 1 MiB)" -- "$cli" id-ns $zdev -n 2
    expect "id-ns text: open zones" 0 "mor     : 8 open zones at most" -- "$cli" id-ns $zdev -n 2
    expect "id-ns text: active zones" 0 "mar     : 14 active zones at most" -- "$cli" id-ns $zdev -n 2
    expect "read a zoned namespace, across a zone boundary" 0 "" -- "$cli" read $zdev -n 2 --lba 2040 --blocks 16 -o "$work/zread"
    if [ "$(stat -c %s "$work/zread")" = 8192 ]; then ok "zoned read: 16 blocks"; else bad "zoned read: wrong size"; fi
    expect "write to a zoned namespace at its write pointer" 0 "2 blocks at LBA 0: success" -- "$cli" write $zdev -n 2 --lba 0 -i "$work/odd" --pad --yes
    expect "write off the write pointer: Zone Invalid Write" 1 "^nvme-cli: Write failed: Zone Invalid Write (SCT 0x1, SC 0xbc" -- "$cli" write $zdev -n 2 --lba 8 -i "$work/odd" --pad --yes
    expect "write across a zone boundary is refused" 2 "crosses a zone boundary (zones of 2048 blocks)" -- "$cli" write $zdev -n 2 --lba 2047 -i "$work/odd" --pad --yes
    expect "write-zeroes at the write pointer" 0 "success" -- "$cli" write-zeroes $zdev -n 2 --lba 2048 --blocks 8 --yes
    expect "write-uncor on a zoned namespace is refused" 2 "namespace 2 is zoned: Write Uncorrectable and Copy are refused" -- "$cli" write-uncor $zdev -n 2 -s 0 --yes
    zns_checks_sim
    protection_checks_sim
    expect "write to its NVM namespace" 0 "2 blocks at LBA 0: success" -- "$cli" write $zdev -n 1 --lba 0 -i "$work/odd" --pad --yes
    expect "list: a row per namespace" 0 "^sim:nvm,zoned  *SIM0001  *nvme-sim  *2  *0.00 B / 67.11 MB  *512 B + 0 B  *[0-9]" -- "$cli" list $zdev
    json "list --json: namespaces" 'j[0]["model"] == "nvme-sim" and j[0]["serial"] == "SIM0001" and [(n["nsid"], n["command_set"], n["size_bytes"], n["used_bytes"], n["block_size"]) for n in j[0]["namespaces"]] == [(1, "nvm", 67108864, 0, 512), (2, "zoned", 67108864, 0, 512)]' -- "$cli" list $zdev --json
    # In one process the sim keeps what was written: list shows the use.
    printf '%s\n' "write $zdev -n 1 --lba 0 -i $work/odd --pad --yes" "list $zdev" >"$work/b-list"
    expect "list: a namespace's usage after a write" 0 "^sim:nvm,zoned  *SIM0001  *nvme-sim  *1  *[1-9][0-9.]* kB / 67.11 MB  *512 B + 0 B" -- "$cli" batch "$work/b-list"
    json "list fails soft per device" 'len(j) == 3 and "error" in j[1] and "no PCI device 0000:00:1f.7" in j[1]["error"] and [n["nsid"] for n in j[2]["namespaces"]] == [1]' -- "$cli" list $dev 0000:00:1f.7 $dev --json
    expect "list text: a device that cannot be opened" 0 "^0000:00:1f.7  *(cannot open: no PCI device" -- "$cli" list $dev 0000:00:1f.7
elif [ "$scenario" = zoned ]; then
    # Two namespaces of 64 MiB, the second zoned: 4 MiB zones, at most 8
    # open and 14 active (scripts/vm/run.sh --namespaces 2 --zoned 2).
    expect "list-ns" 0 '^\[   1\]:0x2 zoned$' -- "$cli" list-ns $dev
    json "list-ns --json" 'j == {"namespaces": [{"nsid": 1, "command_set": "nvm", "csi": 0}, {"nsid": 2, "command_set": "zoned", "csi": 2}]}' -- "$cli" list-ns $dev --json
    json "list-ns --csi zoned (CNS 07h)" '[n["nsid"] for n in j["namespaces"]] == [2]' -- "$cli" list-ns $dev --csi zoned --json
    json "id-ns of the NVM namespace" 'j["command_set"] == "nvm" and "zoned" not in j' -- "$cli" id-ns $dev -n 1 --json
    json "id-ns of the zoned namespace" 'j["command_set"] == "zoned" and j["csi"] == 2 and j["nsze"] == 131072 and j["zoned"] == {"zone_size": 8192, "zone_bytes": 4194304, "max_open": 8, "max_active": 14}' -- "$cli" id-ns $dev -n 2 --json
    expect "id-ns text: zone size" 0 "zsze    : 0x2000 (8192 blocks, 4 MiB)" -- "$cli" id-ns $dev -n 2
    expect "id-ns text: active zones" 0 "mar     : 14 active zones at most" -- "$cli" id-ns $dev -n 2
    expect "read the zoned namespace, across a zone boundary" 0 "" -- "$cli" read $dev -n 2 --lba 8184 --blocks 16 -o "$work/zread"
    if [ "$(stat -c %s "$work/zread")" = 8192 ]; then ok "zoned read: 16 blocks"; else bad "zoned read: wrong size"; fi
    head -c 4096 /dev/urandom >"$work/data"
    # The zns plugin's commands on QEMU's model: the zones keep their
    # state from one command to the next (and from vm_ctrl's zoned test
    # before, which leaves them empty), but each command ends with a
    # controller shutdown, at which QEMU (as the ZNS specification has it)
    # closes every open zone: Closed if written, else Empty.
    expect "zns reset-zone --select-all" 0 "^reset-zone: Success, action:4 zone:0 all:1 nsid:2$" -- "$cli" zns reset-zone $dev -n 2 -a --yes
    expect "zns report-zones" 0 "^nr_zones: 16$" -- "$cli" zns report-zones $dev -n 2
    expect "zns report-zones: nvme-cli's zone line" 0 "^SLBA: 0x2000     WP: 0x2000     Cap: 0x2000     State: EMPTY        Type: SEQWRITE_REQ   Attrs: 0x0$" -- "$cli" zns report-zones $dev -n 2 -d 2
    expect "zns zone-append" 0 "^Success appended data to LBA 0x0$" -- "$cli" zns zone-append $dev -n 2 -s 0 -d "$work/data"
    expect "zns zone-append: the next one lands after it" 0 "^Success appended data to LBA 0x8$" -- "$cli" zns zone-append $dev -n 2 -s 0 -d "$work/data"
    json "zns report-zones --json: the pointer moved, the zone closed at shutdown" 'j["nr_zones"] == 1 and j["zone_list"][0]["state"] == "CLOSED" and j["zone_list"][0]["wp"] == 16' -- "$cli" zns report-zones $dev -n 2 -d 1 --json
    expect "write at the write pointer" 0 "success" -- "$cli" write $dev -n 2 --lba 16 -i "$work/data" --yes
    expect "write off the write pointer: Zone Invalid Write" 1 "^nvme-cli: Write failed: Zone Invalid Write (SCT 0x1, SC 0xbc" -- "$cli" write $dev -n 2 --lba 0 -i "$work/data" --yes
    expect "write across a zone boundary is refused" 2 "crosses a zone boundary (zones of 8192 blocks)" -- "$cli" write $dev -n 2 --lba 8190 -i "$work/data" --yes
    "$cli" read $dev -n 2 --lba 8 --blocks 8 -o "$work/zback"
    if cmp -s "$work/data" "$work/zback"; then ok "the appended data reads back where it landed"; else bad "the appended data is not at LBA 8"; fi
    expect "zns open-zone" 0 "^open-zone: Success, action:3 zone:2000 all:0 nsid:2$" -- "$cli" zns open-zone $dev -n 2 -s 0x2000
    json "zns report-zones --state 1: opened, nothing written, empty again after shutdown" '8192 in [d["slba"] for d in j["zone_list"]]' -- "$cli" zns report-zones $dev -n 2 -S 1 --json
    expect "zns close-zone of it: Invalid Zone State Transition" 1 "Close Zone failed: Invalid Zone State Transition" -- "$cli" zns close-zone $dev -n 2 -s 0x2000
    expect "zns zone-append to it" 0 "^Success appended data to LBA 0x2000$" -- "$cli" zns zone-append $dev -n 2 -s 0x2000 -d "$work/data"
    expect "zns open-zone of a closed zone" 0 "^open-zone: Success, action:3 zone:2000 all:0 nsid:2$" -- "$cli" zns open-zone $dev -n 2 -s 0x2000
    expect "zns close-zone" 0 "^close-zone: Success, action:1 zone:2000 all:0 nsid:2$" -- "$cli" zns close-zone $dev -n 2 -s 0x2000
    expect "zns finish-zone" 0 "^finish-zone: Success, action:2 zone:4000 all:0 nsid:2$" -- "$cli" zns finish-zone $dev -n 2 -s 0x4000
    json "zns report-zones: closed and full" '[(d["slba"], d["state"]) for d in j["zone_list"]] == [(0, "CLOSED"), (8192, "CLOSED"), (16384, "FULL")]' -- "$cli" zns report-zones $dev -n 2 -d 3 --json
    expect "zns zone-append to a full zone: Zone Is Full" 1 "^nvme-cli: Zone Append failed: Zone Is Full (SCT 0x1, SC 0xb9" -- "$cli" zns zone-append $dev -n 2 -s 0x4000 -d "$work/data"
    expect "zns close-zone of an empty zone: Invalid Zone State Transition" 1 "Close Zone failed: Invalid Zone State Transition (SCT 0x1, SC 0xbf" -- "$cli" zns close-zone $dev -n 2 -s 0x6000
    expect "zns reset-zone" 0 "^reset-zone: Success, action:4 zone:0 all:0 nsid:2$" -- "$cli" zns reset-zone $dev -n 2 -s 0 --yes
    "$cli" read $dev -n 2 --lba 0 --blocks 24 -o "$work/zreset"
    if [ "$(tr -d '\0' <"$work/zreset" | wc -c)" = 0 ]; then ok "a reset zone reads zeroes"; else bad "the reset zone still holds data"; fi
    expect "zns zone-append to the NVM namespace" 2 "namespace 1 is not zoned" -- "$cli" zns zone-append $dev -n 1 -s 0 -d "$work/data"
    expect "zns reset-zone --select-all, last" 0 "all:1" -- "$cli" zns reset-zone $dev -n 2 -a --yes
    json "zns report-zones: every zone empty again" 'j["nr_zones"] == 16' -- "$cli" zns report-zones $dev -n 2 --state 1 --json
    expect "write to the NVM namespace" 0 "success" -- "$cli" write $dev -n 1 --lba 0 -i "$work/data" --yes
    expect "list: the zoned namespace's row" 0 "^$dev  *vmnvme0  *QEMU NVMe Ctrl  *2  .* / 67.11 MB  *512 B + 0 B  *[0-9]" -- "$cli" list
    json "list --json: both namespaces" 'j[0]["address"] == "'$dev'" and j[0]["model"] == "QEMU NVMe Ctrl" and [(n["nsid"], n["command_set"], n["size_bytes"], n["block_size"]) for n in j[0]["namespaces"]] == [(1, "nvm", 67108864, 512), (2, "zoned", 67108864, 512)]' -- "$cli" list --json
elif [ "$scenario" = protection ]; then
    # Six namespaces formatted with metadata, 512-byte blocks: 1 8 bytes
    # without protection information (a separate buffer); 2 8 bytes, type
    # 1, extended LBAs; 3 8 bytes, type 2, separate; 4 16 bytes, type 3,
    # the tuple first; 5 16 bytes, type 1 with the 64-bit guard (PIF 2),
    # separate; 6 16 bytes, type 1, the tuple last, extended LBAs. The
    # blocks keep their contents from one command to the next.
    head -c 4096 /dev/urandom >"$work/pdata"
    head -c 64 /dev/urandom >"$work/pmeta"
    head -c 128 /dev/urandom >"$work/pmeta16"
    head -c 64 /dev/zero >"$work/pzero"
    head -c 4160 /dev/urandom >"$work/pext"
    head -c 4224 /dev/urandom >"$work/pext16"
    json "id-ns 1: metadata without protection information" 'j["metadata_size"] == 8 and j["dps"] == 0 and j["pi"] is None and not j["extended_lba"]' -- "$cli" id-ns $dev -n 1 --json
    expect "id-ns 1 text: dps" 0 "^dps     : 0x0$" -- "$cli" id-ns $dev -n 1
    json "id-ns 2: type 1, extended LBAs" 'j["metadata_size"] == 8 and j["dps"] == 1 and j["extended_lba"] and j["flbas"] & 0x10 and j["pi"]["type"] == 1' -- "$cli" id-ns $dev -n 2 --json
    expect "id-ns 2 text: dps" 0 "^dps     : 0x1$" -- "$cli" id-ns $dev -n 2
    expect "id-ns 2 text: the type" 0 "Protection Information Type 1 Enabled" -- "$cli" id-ns $dev -n 2
    json "id-ns 3: type 2, separate" 'j["metadata_size"] == 8 and j["dps"] == 2 and not j["extended_lba"]' -- "$cli" id-ns $dev -n 3 --json
    json "id-ns 4: type 3, the tuple first" 'j["metadata_size"] == 16 and j["dps"] == 0xb and j["pi"] == {"type": 3, "first": True, "guard_bits": 16, "pif": 0}' -- "$cli" id-ns $dev -n 4 --json
    expect "id-ns 4 text: the tuple first" 0 "Protection Information Transferred as First Bytes of Metadata" -- "$cli" id-ns $dev -n 4
    json "id-ns 5: the 64-bit guard" 'j["metadata_size"] == 16 and j["dps"] == 1 and j["pi"]["guard_bits"] == 64 and j["pi"]["pif"] == 2' -- "$cli" id-ns $dev -n 5 --json
    expect "id-ns 5 text: the guard" 0 "guard : 64-bit (CRC-64 NVMe), pif:2" -- "$cli" id-ns $dev -n 5
    json "id-ns 6: type 1, the tuple last, extended LBAs" 'j["metadata_size"] == 16 and j["dps"] == 1 and j["extended_lba"] and not j["pi"]["first"]' -- "$cli" id-ns $dev -n 6 --json

    # 1: metadata without protection information.
    expect "ns 1: write -M" 0 "8 blocks at LBA 16: success" -- "$cli" write $dev -n 1 --lba 16 -i "$work/pdata" -M "$work/pmeta" --yes
    expect "ns 1: read -M" 0 "" -- "$cli" read $dev -n 1 --lba 16 --blocks 8 -o "$work/back1" -M "$work/meta1" -y 8
    if cmp -s "$work/pdata" "$work/back1" && cmp -s "$work/pmeta" "$work/meta1"; then ok "ns 1: the same data and metadata read back"; else bad "ns 1: data or metadata differ"; fi
    expect "ns 1: compare -M" 0 "^compare: Success$" -- "$cli" compare $dev -n 1 -s 16 -d "$work/pdata" -M "$work/pmeta"
    expect "ns 1: compare -M of other metadata: Compare Failure" 1 "Compare Failure" -- "$cli" compare $dev -n 1 -s 16 -d "$work/pdata" -M "$work/pzero"
    head -c 10 /dev/urandom >"$work/pshort"
    expect "ns 1: a metadata file of the wrong length is refused" 2 "holds 10 bytes: 8 blocks of 8 bytes of metadata need 64" -- "$cli" write $dev -n 1 --lba 16 -i "$work/pdata" -M "$work/pshort" --yes
    expect "ns 1: --prinfo without protection information is refused" 2 "namespace 1 is formatted without it" -- "$cli" read $dev -n 1 --lba 16 --blocks 8 -o "$work/x" -M "$work/x.meta" -p 8
    expect "ns 1: read without -M is refused" 2 "give a metadata file (-M/--metadata)" -- "$cli" read $dev -n 1 --lba 16 --blocks 8 -o "$work/x"
    expect "ns 1: --metadata-size that does not match" 2 "does not match namespace 1's 8 bytes" -- "$cli" read $dev -n 1 --lba 16 --blocks 8 -o "$work/x" -M "$work/x.meta" -y 16

    # 2: type 1, extended LBAs.
    expect "ns 2: PRACT write" 0 "8 blocks at LBA 0: success" -- "$cli" write $dev -n 2 --lba 0 -i "$work/pdata" -p 8 --yes
    expect "ns 2: PRACT read with every check" 0 "" -- "$cli" read $dev -n 2 --lba 0 --blocks 8 -o "$work/strip2" -p 15
    if cmp -s "$work/pdata" "$work/strip2"; then ok "ns 2: the data reads back, tuples stripped"; else bad "ns 2: the stripped read differs"; fi
    expect "ns 2: read with the tuples (checked)" 0 "" -- "$cli" read $dev -n 2 --lba 0 --blocks 8 -o "$work/ext2" -p 7
    if [ "$(stat -c %s "$work/ext2")" = 4160 ] && cmp -s -n 512 "$work/pdata" "$work/ext2"; then ok "ns 2: 520-byte blocks, data then tuple"; else bad "ns 2: the extended read is wrong"; fi
    expect "ns 2: write of data and metadata as they are" 0 "8 blocks at LBA 100: success" -- "$cli" write $dev -n 2 --lba 100 -i "$work/pext" --yes
    expect "ns 2: read of them as they are" 0 "" -- "$cli" read $dev -n 2 --lba 100 --blocks 8 -o "$work/ext2b"
    if cmp -s "$work/pext" "$work/ext2b"; then ok "ns 2: extended blocks read back the same"; else bad "ns 2: the extended blocks differ"; fi
    expect "ns 2: random tuples fail the guard check" 1 "Read failed: End-to-end Guard Check Error (SCT 0x2, SC 0x82" -- "$cli" read $dev -n 2 --lba 100 --blocks 8 -o "$work/x" -p 4
    expect "ns 2: -M on extended LBAs is refused" 2 "extended LBAs" -- "$cli" write $dev -n 2 --lba 0 -i "$work/pext" -M "$work/pmeta" --yes

    # 3: type 2, separate.
    expect "ns 3: PRACT write with a reference tag" 0 "success" -- "$cli" write $dev -n 3 --lba 0 -i "$work/pdata" -p 8 -r 0x500 --yes
    expect "ns 3: read -M checking guard and reference tag" 0 "" -- "$cli" read $dev -n 3 --lba 0 --blocks 8 -o "$work/back3" -M "$work/meta3" -p 5 -r 0x500
    if cmp -s "$work/pdata" "$work/back3" && [ "$(stat -c %s "$work/meta3")" = 64 ]; then ok "ns 3: data and tuples read back"; else bad "ns 3: the read differs"; fi
    expect "ns 3: another reference tag fails" 1 "End-to-end Reference Tag Check Error" -- "$cli" read $dev -n 3 --lba 0 --blocks 8 -o "$work/x" -M "$work/x.meta" -p 1 -r 0x600
    expect "ns 3: PRACT write, default reference tag" 0 "success" -- "$cli" write $dev -n 3 --lba 200 -i "$work/pdata" -p 8 --yes
    expect "ns 3: read without -M (the controller strips and checks)" 0 "" -- "$cli" read $dev -n 3 --lba 200 --blocks 8 -o "$work/strip3"
    if cmp -s "$work/pdata" "$work/strip3"; then ok "ns 3: the stripped read is the data"; else bad "ns 3: the stripped read differs"; fi
    expect "ns 3: write of zeroed tuples, unchecked" 0 "success" -- "$cli" write $dev -n 3 --lba 300 -i "$work/pdata" -M "$work/pzero" -p 0 --yes
    expect "ns 3: zeroed tuples fail the guard check" 1 "Read failed: End-to-end Guard Check Error" -- "$cli" read $dev -n 3 --lba 300 --blocks 8 -o "$work/x" -M "$work/x.meta" -p 4

    # 4: type 3, the tuple first of 16 bytes.
    expect "ns 4: PRACT write with an application tag" 0 "success" -- "$cli" write $dev -n 4 --lba 0 -i "$work/pdata" -M "$work/pmeta16" -p 8 -a 0x1234 --yes
    expect "ns 4: the application tag checks" 0 "" -- "$cli" read $dev -n 4 --lba 0 --blocks 8 -o "$work/back4" -M "$work/meta4" -p 6 -a 0x1234 -m 0xffff
    if cmp -s "$work/pdata" "$work/back4" && [ "$(stat -c %s "$work/meta4")" = 128 ]; then ok "ns 4: data and 16-byte metadata read back"; else bad "ns 4: the read differs"; fi
    expect "ns 4: another application tag fails" 1 "End-to-end Application Tag Check Error" -- "$cli" read $dev -n 4 --lba 0 --blocks 8 -o "$work/x" -M "$work/x.meta" -p 2 -a 0x4321 -m 0xffff
    expect "ns 4: -M is needed (metadata beyond the tuple)" 2 "give a metadata file" -- "$cli" read $dev -n 4 --lba 0 --blocks 8 -o "$work/x"

    # 5: type 1, the 64-bit guard.
    expect "ns 5: PRACT write" 0 "success" -- "$cli" write $dev -n 5 --lba 8 -i "$work/pdata" -p 8 --yes
    expect "ns 5: read with every check" 0 "" -- "$cli" read $dev -n 5 --lba 8 --blocks 8 -o "$work/back5" -p 15
    if cmp -s "$work/pdata" "$work/back5"; then ok "ns 5: the data reads back"; else bad "ns 5: the data differs"; fi
    expect "ns 5: read -M of the 16-byte tuples, checked" 0 "" -- "$cli" read $dev -n 5 --lba 8 --blocks 8 -o "$work/x" -M "$work/meta5" -p 7
    if [ "$(stat -c %s "$work/meta5")" = 128 ]; then ok "ns 5: 16-byte tuples"; else bad "ns 5: the tuples' size"; fi

    # 6: type 1, the tuple last of 16 bytes, extended LBAs.
    expect "ns 6: PRACT write of data and metadata" 0 "8 blocks at LBA 0: success" -- "$cli" write $dev -n 6 --lba 0 -i "$work/pext16" -p 8 --yes
    expect "ns 6: read with every check" 0 "" -- "$cli" read $dev -n 6 --lba 0 --blocks 8 -o "$work/back6" -p 7
    if [ "$(stat -c %s "$work/back6")" = 4224 ] && cmp -s -n 512 "$work/pext16" "$work/back6"; then ok "ns 6: 528-byte blocks read back"; else bad "ns 6: the read is wrong"; fi
    expect "ns 6: data not whole 528-byte blocks" 2 "not a multiple of 528 bytes per block" -- "$cli" write $dev -n 6 --lba 0 -i "$work/pdata" --yes
else
    json "list --json" 'j[0]["address"] == "'$dev'" and j[0]["driver"] == "vfio-pci" and j[0]["usable"]' -- "$cli" list --json
    json "list --json: the namespace" 'j[0]["model"] == "QEMU NVMe Ctrl" and j[0]["serial"] == "vmnvme0" and [(n["nsid"], n["command_set"], n["size_bytes"], n["block_size"], n["metadata"]) for n in j[0]["namespaces"]] == [(1, "nvm", 67108864, 512, 0)]' -- "$cli" list --json
    expect "list text: a row per namespace" 0 "^$dev  *vmnvme0  *QEMU NVMe Ctrl  *1  .* / 67.11 MB  *512 B + 0 B  *[0-9]" -- "$cli" list
    expect "list-ns" 0 '^\[   0\]:0x1 nvm$' -- "$cli" list-ns $dev
    json "id-ctrl --json" 'j["mn"] == "QEMU NVMe Ctrl" and j["vid"] == 0x1b36 and j["ver"] == 0x10400' -- "$cli" id-ctrl $dev --json
    expect "id-ctrl text" 0 "mn        : QEMU NVMe Ctrl" -- "$cli" id-ctrl 00:03.0
    json "id-ns --json" 'j["nsze"] == 131072 and j["block_size"] == 512 and j["lbafs"][0]["in_use"]' -- "$cli" id-ns $dev -n 1 --json

    head -c $((1 << 20)) /dev/urandom >"$work/data"
    expect "write a file" 0 "success" -- "$cli" write $dev -n 1 --lba 4096 -i "$work/data" --yes
    expect "read it back" 0 "" -- "$cli" read $dev -n 1 --lba 4096 --size $((1 << 20)) -o "$work/back"
    if cmp -s "$work/data" "$work/back"; then ok "read back byte-identical"; else bad "read back differs"; fi
    "$cli" read $dev -n 1 --lba 4096 --blocks 8 >"$work/stdout-read"
    if cmp -s -n 4096 "$work/data" "$work/stdout-read"; then ok "read to stdout"; else bad "read to stdout differs"; fi

    head -c 1000 /dev/urandom >"$work/odd"
    expect "write without --yes" 2 "add --yes" -- "$cli" write $dev -n 1 --lba 4096 -i "$work/odd"
    expect "size not a multiple of the block size" 2 "not a multiple of the 512-byte block size" -- "$cli" write $dev -n 1 --lba 4096 -i "$work/odd" --yes
    "$cli" read $dev -n 1 --lba 4096 --blocks 2 -o "$work/after"
    if cmp -s -n 1024 "$work/data" "$work/after"; then ok "refused writes wrote nothing"; else bad "a refused write changed the disk"; fi
    expect "write --pad" 0 "success" -- "$cli" write $dev -n 1 --lba 4096 -i "$work/odd" --pad --yes
    "$cli" read $dev -n 1 --lba 4096 --blocks 2 -o "$work/padded"
    if cmp -s -n 1000 "$work/odd" "$work/padded" && [ "$(tail -c 24 "$work/padded" | tr -d '\0' | wc -c)" = 0 ]; then
        ok "padded write reads back with zero padding"
    else
        bad "padded write reads back wrong"
    fi
    expect "read past the end" 2 "past the end of namespace 1" -- "$cli" read $dev -n 1 --lba 131070 --blocks 8 -o "$work/x"
    expect "write past the end" 2 "past the end of namespace 1" -- "$cli" write $dev -n 1 --lba 131071 -i "$work/data" --yes
    expect "unknown device" 2 "no PCI device 0000:00:1f.7" -- "$cli" id-ctrl 0000:00:1f.7
    expect "malformed address" 2 "" -- "$cli" id-ctrl not-an-address
    expect "inactive namespace" 2 "namespace 7 is not active" -- "$cli" id-ns $dev -n 7
    expect "read without a length" 2 "give --blocks or --size" -- "$cli" read $dev -n 1 --lba 0
    expect "flush" 0 "success" -- "$cli" flush $dev -n 1
    expect "trim without --yes" 2 "add --yes" -- "$cli" trim $dev -n 1 --lba 0 --blocks 8
    json "trim --json" 'j["command"] == "trim" and j["status"] == "success"' -- "$cli" trim $dev -n 1 --lba 8192 --blocks 64 --yes --json
    expect "write-zeroes" 0 "success" -- "$cli" write-zeroes $dev -n 1 --lba 4096 --blocks 8 --yes
    "$cli" read $dev -n 1 --lba 4096 --blocks 8 -o "$work/zeroes"
    if [ "$(tr -d '\0' <"$work/zeroes" | wc -c)" = 0 ]; then ok "write-zeroes reads back zeroes"; else bad "write-zeroes left data"; fi
    json "smart-log --json" 'j["host_write_commands"] > 0 and j["temperature"] > 200' -- "$cli" smart-log $dev --json
    expect "smart-log text" 0 "temperature" -- "$cli" smart-log $dev
    expect "usage error" 2 "Usage" -- "$cli" frobnicate

    # The optional NVM commands on QEMU's controller (7.2: Compare, Copy,
    # Dataset Management; Verify only in its Commands Supported and
    # Effects log; no Write Uncorrectable).
    head -c 8192 /dev/urandom >"$work/cmp"
    "$cli" write $dev -n 1 --lba 30000 -i "$work/cmp" --yes 2>/dev/null
    expect "compare: equal" 0 "^compare: Success$" -- "$cli" compare $dev -s 30000 -d "$work/cmp"
    head -c 8192 /dev/urandom >"$work/other"
    expect "compare: a mismatch names Compare Failure" 1 "^nvme-cli: Compare failed: Compare Failure (SCT 0x2, SC 0x85" -- "$cli" compare $dev -s 30000 -d "$work/other"
    expect "verify (split at QEMU's Verify size limit)" 0 "^NVME Verify Success$" -- "$cli" verify $dev -s 0 -c 4095
    expect "write-uncor is refused: QEMU lacks it" 2 "the controller does not support the Write Uncorrectable command" -- "$cli" write-uncor $dev -s 30000 --yes
    expect "copy" 0 "^NVMe Copy: success$" -- "$cli" copy $dev -d 31000 -s 30008,30000 -b 7,7 --yes
    "$cli" read $dev -n 1 --lba 31000 --blocks 16 -o "$work/copied"
    { tail -c 4096 "$work/cmp"; head -c 4096 "$work/cmp"; } >"$work/want"
    if cmp -s "$work/want" "$work/copied"; then ok "copy: the ranges read back in order"; else bad "copy: the destination holds something else"; fi
    expect "copy over QEMU's range length (MSSRL 128)" 2 "over the limit of 128 (Identify Namespace MSSRL)" -- "$cli" copy $dev -d 31000 -s 0 -b 128 --yes
    json "dsm --ad of several ranges --json" 'j["command"] == "dsm" and j["ranges"] == 2 and j["attributes"]["ad"]' -- "$cli" dsm $dev -s 31000,31008 -b 8,8 -a 0,0x100 --ad --idr --yes --json
    expect "dsm hints" 0 "^NVMe DSM: success$" -- "$cli" dsm $dev -s 30000 -b 16 --idw
    "$cli" read $dev -n 1 --lba 30000 --blocks 16 -o "$work/hinted"
    if cmp -s "$work/cmp" "$work/hinted"; then ok "dsm without --ad leaves the data"; else bad "dsm hints changed the data"; fi
    admin_checks $dev "QEMU NVM"
fi

rm -rf "$work"
echo "nvme-cli: $passed passed, $failed failed"
[ "$failed" = 0 ]
