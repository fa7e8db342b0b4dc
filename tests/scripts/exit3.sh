#!/bin/sh
echo "going to fail" >&2
exit 3
