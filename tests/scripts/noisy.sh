#!/bin/sh
# Writes far more than the 4 KiB tail the log keeps, ending with a marker.
cat > /dev/null
i=0
while [ $i -lt 2000 ]; do echo "line $i of noise"; i=$((i+1)); done
echo "THE-END"
