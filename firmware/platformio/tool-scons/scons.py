"""PlatformIO's core package tool-scons, made from the SCons that pip installed (PlatformIO normally downloads
it from its registry, which poetc's machines cannot reach). PlatformIO runs this file with its own Python."""

import sys

import SCons.Script

sys.exit(SCons.Script.main())
