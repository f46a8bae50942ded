"""loopml.ui"""
