package main

import (
	"fmt"
	"runtime"
	"runtime/debug"

	pg_query "github.com/pganalyze/pg_query_go/v6"
	"github.com/spf13/cobra"
)

// Set with -ldflags "-X main.version=... -X main.commit=...".
var (
	version = "dev"
	commit  = ""
)

func newVersionCmd() *cobra.Command {
	return &cobra.Command{
		Use:   "version",
		Short: "Print version, commit, Go and pg_query versions",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			c := commit
			pgq := "unknown"
			if bi, ok := debug.ReadBuildInfo(); ok {
				for _, s := range bi.Settings {
					if s.Key == "vcs.revision" && c == "" {
						c = s.Value
					}
				}
				for _, d := range bi.Deps {
					if d.Path == "github.com/pganalyze/pg_query_go/v6" {
						pgq = d.Version
					}
				}
			}
			if c == "" {
				c = "unknown"
			}
			grammar := "unknown"
			if tree, err := pg_query.Parse("SELECT 1"); err == nil {
				v := tree.GetVersion() // e.g. 170007
				grammar = fmt.Sprintf("PostgreSQL %d.%d", v/10000, v%100)
			}
			fmt.Fprintf(cmd.OutOrStdout(), "tenantguard %s\ncommit %s\ngo %s %s/%s\npg_query_go %s (%s grammar)\n",
				version, c, runtime.Version(), runtime.GOOS, runtime.GOARCH, pgq, grammar)
			return nil
		},
	}
}
